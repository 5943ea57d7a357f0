package etcdserver

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestLabArgs(t *testing.T) {
	c := Lab("eb-x", "/run/klab/eb-x/etcd", netip.MustParseAddr("192.168.1.100"))
	want := []string{
		"--name=control-plane",
		"--data-dir=/run/klab/eb-x/etcd/data",
		"--listen-client-urls=http://192.168.1.100:2379,http://127.0.0.1:2379",
		"--advertise-client-urls=http://192.168.1.100:2379",
		"--listen-peer-urls=http://192.168.1.100:2380",
		"--initial-advertise-peer-urls=http://192.168.1.100:2380",
		"--initial-cluster=control-plane=http://192.168.1.100:2380",
		"--initial-cluster-token=klab.eb-x",
		"--initial-cluster-state=new",
		"--unsafe-no-fsync=true",
		"--heartbeat-interval=10",
		"--election-timeout=100",
		"--logger=zap",
		"--log-outputs=/run/klab/eb-x/etcd/etcd.log",
		"--log-level=warn",
	}
	if got := c.Args(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Args:\n got %q\nwant %q", got, want)
	}
}

// Args, then Parse, gives the Config back: klab-etcd reads what klab
// writes, TLS and extra listeners included.
func TestArgsParseRoundTrip(t *testing.T) {
	ip := netip.MustParseAddr("192.168.1.100")
	tls := Lab("eb-y", "/s/eb-y/etcd", ip)
	tls.ExtraListenClientURLs = []string{"https://10.0.0.5:2379"}
	tls.CertFile, tls.KeyFile, tls.TrustedCAFile, tls.ClientCertAuth = "/p/server.crt", "/p/server.key", "/p/ca.crt", true
	noSync := Lab("eb-z", "/s/eb-z/etcd", ip)
	noSync.UnsafeNoFsync = false
	for name, c := range map[string]Config{"lab": Lab("eb-x", "/s/eb-x/etcd", ip), "tls": tls, "fsync": noSync} {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(c.Args())
			if err != nil {
				t.Fatal(err)
			}
			want := c
			want.ListenClientURLs, want.ExtraListenClientURLs = c.ClientURLs(), nil
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse(Args()):\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want func(*Config) // changes to etcd's defaults
		err  string
	}{
		{name: "defaults", args: nil, want: func(c *Config) {}},
		{name: "space-separated values and single dashes", args: []string{"-name", "m1", "--data-dir", "/d", "--client-cert-auth", "--trusted-ca-file", "/ca"},
			want: func(c *Config) {
				c.Name, c.DataDir, c.ClientCertAuth, c.TrustedCAFile = "m1", "/d", true, "/ca"
				c.InitialCluster = "m1=http://localhost:2380"
			}},
		{name: "mixed http and https", args: []string{"--listen-client-urls=http://127.0.0.1:2379, https://10.0.0.1:2379", "--cert-file=/c", "--key-file=/k"},
			want: func(c *Config) {
				c.ListenClientURLs = []string{"http://127.0.0.1:2379", "https://10.0.0.1:2379"}
				c.CertFile, c.KeyFile = "/c", "/k"
			}},
		{name: "https without a certificate", args: []string{"--listen-client-urls=https://10.0.0.1:2379"}, err: "give its certificate and key with --cert-file and --key-file"},
		{name: "client-cert-auth without a CA", args: []string{"--client-cert-auth=true"}, err: "give it with --trusted-ca-file"},
		{name: "unknown flag", args: []string{"--auto-compaction-retention=1"}, err: "flag provided but not defined: -auto-compaction-retention: it takes only these flags"},
		{name: "positional argument", args: []string{"--name=a", "extra"}, err: `takes flags only, not "extra"`},
		{name: "not a URL", args: []string{"--listen-peer-urls=localhost:2380"}, err: `"localhost:2380" is not an http:// or https:// URL`},
		{name: "other logger", args: []string{"--logger=capnslog"}, err: "logs with zap only"},
		{name: "bad cluster state", args: []string{"--initial-cluster-state=old"}, err: "use new or existing"},
		{name: "bad bool", args: []string{"--unsafe-no-fsync=maybe"}, err: "invalid boolean value"},
		{name: "election under 5 ticks", args: []string{"--heartbeat-interval=50", "--election-timeout=200"}, err: "--election-timeout 200 ms is under 5 heartbeats of 50 ms: make it at least 250"},
		{name: "help", args: []string{"--help"}, err: "klab-etcd runs the etcd server with these flags of etcd's: --advertise-client-urls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse(%q) = %v, want an error with %q", tc.args, err, tc.err)
				}
				if help := errors.Is(err, flag.ErrHelp); help != (tc.name == "help") {
					t.Fatalf("Parse(%q): errors.Is(err, flag.ErrHelp) = %v", tc.args, help)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Config{Name: "default", DataDir: "default.etcd", ListenClientURLs: []string{"http://localhost:2379"},
				AdvertiseClientURLs: []string{"http://localhost:2379"}, ListenPeerURLs: []string{"http://localhost:2380"},
				InitialAdvertisePeerURLs: []string{"http://localhost:2380"}, InitialCluster: "default=http://localhost:2380",
				InitialClusterToken: "etcd-cluster", InitialClusterState: "new", LogOutputs: []string{"stderr"}, LogLevel: "info",
				HeartbeatInterval: 100, ElectionTimeout: 1000}
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse(%q):\n got %+v\nwant %+v", tc.args, got, want)
			}
		})
	}
}

func TestLabOf(t *testing.T) {
	argv := append([]string{"/usr/bin/etcd"}, Lab("eb-q", "/run/klab/eb-q/etcd", netip.MustParseAddr("192.168.1.100")).Args()...)
	for _, tc := range []struct {
		name     string
		argv     []string
		lab, dir string
	}{
		{"klab's etcd", argv, "eb-q", "/run/klab"},
		{"another token", replace(argv, "--initial-cluster-token=klab.eb-q", "--initial-cluster-token=etcd-cluster"), "", ""},
		{"data of another lab", replace(argv, "--data-dir=/run/klab/eb-q/etcd/data", "--data-dir=/run/klab/eb-r/etcd/data"), "", ""},
		{"another member", replace(argv, "--name=control-plane", "--name=infra0"), "", ""},
		{"empty", nil, "", ""},
	} {
		if lab, dir := LabOf(tc.argv); lab != tc.lab || dir != tc.dir {
			t.Errorf("%s: LabOf = %q, %q, want %q, %q", tc.name, lab, dir, tc.lab, tc.dir)
		}
	}
}

func replace(argv []string, old, new string) []string {
	out := append([]string(nil), argv...)
	for i, a := range out {
		if a == old {
			out[i] = new
		}
	}
	return out
}

func TestFind(t *testing.T) {
	self := t.TempDir()
	onPath := map[string]string{}
	look := func(name string) (string, error) {
		if p, ok := onPath[name]; ok {
			return p, nil
		}
		return "", errors.New("not found")
	}
	if _, err := Find(self, look); !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), "build it with 'make' (bin/klab-etcd) or install etcd-server") {
		t.Fatalf("nothing anywhere: %v", err)
	}
	onPath["etcd"] = "/usr/bin/etcd"
	if b, err := Find(self, look); err != nil || b.Path != "/usr/bin/etcd" || !b.etcd {
		t.Fatalf("etcd on PATH: %+v %v", b, err)
	}
	onPath["klab-etcd"] = "/usr/local/bin/klab-etcd"
	if b, err := Find(self, look); err != nil || b.Path != "/usr/local/bin/klab-etcd" || b.etcd {
		t.Fatalf("klab-etcd on PATH: %+v %v", b, err)
	}
	// Not executable: not a candidate.
	beside := filepath.Join(self, "klab-etcd")
	if err := os.WriteFile(beside, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := Find(self, look); b.Path != "/usr/local/bin/klab-etcd" {
		t.Fatalf("a non-executable klab-etcd beside klab was picked: %+v", b)
	}
	os.Chmod(beside, 0o755)
	if b, err := Find(self, look); err != nil || b.Path != beside || b.Why != "klab-etcd beside klab" {
		t.Fatalf("klab-etcd beside klab: %+v %v", b, err)
	}
}

func TestArgvByVersion(t *testing.T) {
	c := Lab("eb-v", "/s/eb-v/etcd", netip.MustParseAddr("192.168.1.100"))
	for _, tc := range []struct {
		version string
		fsync   bool // --unsafe-no-fsync passed
	}{
		{"", true}, // klab-etcd
		{"3.4.23", false},
		{"3.5.0", true},
		{"3.6.4", true},
		{"4.0.0", true},
		{"garbage", false},
	} {
		argv, notes := Binary{Path: "/e", Version: tc.version}.Argv(c)
		has := strings.Contains(strings.Join(argv, " "), "--unsafe-no-fsync=true")
		if argv[0] != "/e" || has != tc.fsync || has == (len(notes) > 0) {
			t.Errorf("version %q: argv %q notes %q", tc.version, argv, notes)
		}
	}
}

func TestParseVersion(t *testing.T) {
	out := "etcd Version: 3.4.23\nGit SHA: Not provided (use ./build instead of go build)\nGo Version: go1.19.8\n"
	if v := ParseVersion(out); v != "3.4.23" {
		t.Fatalf("ParseVersion = %q", v)
	}
	if v := ParseVersion("usage: something"); v != "" {
		t.Fatalf("ParseVersion of non-etcd output = %q", v)
	}
}
