package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klab-dev/klab/internal/testutil"
)

// TestEtcdServerBinaries builds a two-node control-plane lab whose etcd is
// klab-etcd (beside the test's klab, as make builds it) and one whose etcd
// is Debian's /usr/bin/etcd (a klab alone in its directory, no klab-etcd
// on PATH), and checks with etcdctl that flannel's config and both leases
// are in etcd, that the server klab recorded is that binary itself (exec'd
// by 'klab __serve'), that repair starts it again after a crash with the
// leases kept, and that destroy stops it even after its namespace was
// deleted behind klab's back.
func TestEtcdServerBinaries(t *testing.T) {
	c := newCLI(t)
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("needs etcdctl (Debian etcd-client: scripts/install-deps.sh installs it)")
	}
	sysPath := "/usr/sbin:/usr/bin:/sbin:/bin"
	for _, tc := range []struct{ name, want string }{
		{"klab-etcd", filepath.Join(filepath.Dir(c.bin), "klab-etcd")},
		{"debian-etcd", "/usr/bin/etcd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := &cli{t: t, bin: c.bin, state: t.TempDir()}
			var env []string
			if tc.name == "debian-etcd" {
				if _, err := os.Stat(tc.want); err != nil {
					t.Skip("needs Debian's etcd (etcd-server: scripts/install-deps.sh installs it)")
				}
				if p, err := lookPathIn("klab-etcd", sysPath); err == nil {
					t.Skipf("%s is installed: klab would run it, not Debian's etcd", p)
				}
				dir := t.TempDir()
				b, err := os.ReadFile(c.bin)
				if err != nil {
					t.Fatal(err)
				}
				cl.bin = filepath.Join(dir, "klab")
				if err := os.WriteFile(cl.bin, b, 0o755); err != nil {
					t.Fatal(err)
				}
				env = []string{"PATH=" + sysPath}
			}
			lab := testutil.LabName(t, "eb")
			t.Cleanup(func() { cl.assertClean(lab, "after destroy") })
			t.Cleanup(func() { cl.run(env, "destroy", lab) })
			for _, node := range []string{"node1", "node2"} {
				args := []string{"node", "add", node, "--lab", lab}
				if node == "node1" {
					args = append(args, "--control-plane", "etcd")
				}
				if r := cl.run(env, args...); r.code != 0 {
					t.Fatalf("klab %s: exit %d\n%s", strings.Join(args, " "), r.code, r.out)
				}
			}
			l := &cpLab{cli: cl, lab: lab}
			keys := l.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/")
			for _, k := range []string{"/coreos.com/network/config", "/coreos.com/network/subnets/10.244.1.0-24", "/coreos.com/network/subnets/10.244.2.0-24"} {
				if !strings.Contains(keys, k+"\n") {
					t.Errorf("etcdctl get --prefix /coreos.com/network/: no %s in\n%s", k, keys)
				}
			}
			pid := l.serverPID("control-plane", "etcd")
			exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
			if err != nil || exe != tc.want {
				t.Errorf("the recorded etcd (pid %d) runs %q (%v), want %s", pid, exe, err, tc.want)
			}
			var log string
			for _, s := range l.labState().Servers {
				if s.Proto == "etcd" {
					b, _ := os.ReadFile(s.Log)
					log = string(b)
				}
			}
			if !strings.Contains(log, "etcd: running "+tc.want+" (") {
				t.Errorf("the server log does not say which etcd runs:\n%s", log)
			}
			// etcd killed: repair starts the same binary again, on the
			// same data.
			syscall.Kill(pid, syscall.SIGKILL)
			waitFor(t, 3*time.Second, "etcd killed", func() bool { return syscall.Kill(pid, 0) != nil || isZombieProc(pid) })
			if r := cl.run(env, "repair", "--lab", lab); r.code != 0 || !strings.Contains(r.out, "etcd on control-plane") {
				t.Fatalf("klab repair after etcd was killed: exit %d\n%s", r.code, r.out)
			}
			pid = l.serverPID("control-plane", "etcd")
			if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe")); exe != tc.want {
				t.Errorf("repair started %q, want %s", exe, tc.want)
			}
			if keys := l.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"); !strings.Contains(keys, "10.244.2.0-24") {
				t.Errorf("the leases are gone after etcd's restart:\n%s", keys)
			}
			// Its namespace deleted behind klab's back: destroy still
			// finds the etcd by its command line.
			sh(t, "ip", "netns", "del", l.ns("control-plane"))
			if r := cl.run(env, "destroy", lab); r.code != 0 {
				t.Fatalf("klab destroy: exit %d\n%s", r.code, r.out)
			}
			waitFor(t, 3*time.Second, "etcd stopped by destroy", func() bool {
				return syscall.Kill(pid, 0) != nil || isZombieProc(pid)
			})
		})
	}
}

func lookPathIn(name, path string) (string, error) {
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}

func isZombieProc(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// TestEtcdServerTLS runs klab-etcd with etcd's TLS flags in a lab node's
// namespace: an https listener with a server certificate from a test CA
// and --client-cert-auth, beside a plain http one. etcdctl with the CA
// and a client certificate works over https; without the client
// certificate it is refused; over http it works as before.
func TestEtcdServerTLS(t *testing.T) {
	c := newCLI(t)
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("needs etcdctl (Debian etcd-client: scripts/install-deps.sh installs it)")
	}
	lab := testutil.LabName(t, "eb")
	t.Cleanup(func() { c.assertClean(lab, "after destroy") })
	c.destroyOnCleanup(lab)
	c.must("node", "add", "node1", "--lab", lab)
	ns := "klab." + lab + ".node1"
	ip := "192.168.1.101"

	dir := t.TempDir()
	pki := newTestPKI(t, dir, net.ParseIP(ip))
	etcd := exec.Command("ip", "netns", "exec", ns, filepath.Join(filepath.Dir(c.bin), "klab-etcd"),
		"--name=eb", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls=https://"+ip+":2379,http://127.0.0.1:2379",
		"--advertise-client-urls=https://"+ip+":2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=eb=http://127.0.0.1:2380", "--unsafe-no-fsync",
		"--log-outputs="+filepath.Join(dir, "etcd.log"), "--log-level=warn",
		"--cert-file="+pki.serverCert, "--key-file="+pki.serverKey,
		"--trusted-ca-file="+pki.ca, "--client-cert-auth")
	out, err := etcd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	etcd.Stderr = etcd.Stdout
	t0 := time.Now()
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		etcd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { etcd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			etcd.Process.Kill()
			<-done
		}
	})
	up := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var all []string
		for sc.Scan() {
			all = append(all, sc.Text())
			if strings.HasPrefix(sc.Text(), "etcd listening on https://"+ip+":2379") {
				up <- ""
			}
		}
		up <- strings.Join(all, "\n")
	}()
	select {
	case o := <-up:
		if o != "" {
			b, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("klab-etcd did not start:\n%s\n%s", o, b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("klab-etcd did not say it listens within 15 s")
	}
	t.Logf("klab-etcd up after %v", time.Since(t0).Round(time.Millisecond))

	// A refused client retries until its timeouts: they are short.
	etcdctl := func(args ...string) (string, error) {
		o, err := exec.Command("ip", append([]string{"netns", "exec", ns, "etcdctl", "--dial-timeout", "1s", "--command-timeout", "1s"}, args...)...).CombinedOutput()
		return string(o), err
	}
	https := []string{"--endpoints", "https://" + ip + ":2379", "--cacert", pki.ca}
	withCert := append(https, "--cert", pki.clientCert, "--key", pki.clientKey)
	if o, err := etcdctl(append(withCert, "put", "/eb/tls", "over-https")...); err != nil {
		t.Fatalf("etcdctl put over https with a client certificate: %v\n%s", err, o)
	}
	if o, err := etcdctl(append(withCert, "get", "--print-value-only", "/eb/tls")...); err != nil || strings.TrimSpace(o) != "over-https" {
		t.Fatalf("etcdctl get over https: %v %q", err, o)
	}
	t0 = time.Now()
	if o, err := etcdctl(append(https, "get", "/eb/tls")...); err == nil {
		t.Fatalf("etcdctl over https without a client certificate was served:\n%s", o)
	} else {
		t.Logf("without a client certificate: refused in %v (%v)", time.Since(t0).Round(time.Millisecond), err)
	}
	// ...by the TLS handshake, etcd says (embed's "rejected connection").
	if b, _ := os.ReadFile(filepath.Join(dir, "etcd.log")); !strings.Contains(string(b), "tls: client didn't provide a certificate") {
		t.Errorf("etcd's log does not show the handshake refused for want of a client certificate:\n%s", b)
	}
	if o, err := etcdctl("--endpoints", "http://127.0.0.1:2379", "get", "--print-value-only", "/eb/tls"); err != nil || strings.TrimSpace(o) != "over-https" {
		t.Fatalf("etcdctl over the http listener: %v %q", err, o)
	}
}

type testPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

// newTestPKI writes a self-signed CA, a server certificate for ip and
// 127.0.0.1, and a client certificate, all signed by the CA, as PEM
// files in dir.
func newTestPKI(t *testing.T, dir string, ip net.IP) testPKI {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "eb test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	sDER, sKey := leaf(2, "eb etcd", x509.ExtKeyUsageServerAuth, []net.IP{ip, net.IPv4(127, 0, 0, 1)})
	cDER, cKey := leaf(3, "eb client", x509.ExtKeyUsageClientAuth, nil)
	return testPKI{
		ca:         write("ca.crt", "CERTIFICATE", caDER),
		serverCert: write("server.crt", "CERTIFICATE", sDER), serverKey: writeKey("server.key", sKey),
		clientCert: write("client.crt", "CERTIFICATE", cDER), clientKey: writeKey("client.key", cKey),
	}
}
