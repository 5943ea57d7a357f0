// Package pki is a lab's certificate authority: what klab uses for
// anything that crosses machines (etcd's TLS listener and the join
// endpoint on the control-plane node, the joined machines' client
// certificates). It mirrors kubeadm's PKI in miniature: one CA per lab
// (kubeadm's etcd/ca), a serving certificate for the control-plane
// address, a client certificate per machine, and the CA's public-key
// pin that a join command carries (kubeadm's
// --discovery-token-ca-cert-hash "sha256:<hex of the SubjectPublicKeyInfo
// digest>", so a joining machine trusts the first one without copying
// files). Keys are ECDSA P-256: fast to make, small to print.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Validity of everything a lab's CA signs: labs are short-lived, but a
// classroom lab may run for a term.
const Validity = 365 * 24 * time.Hour

// Files of a lab's PKI directory.
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	ServerCert = "server.crt" // etcd's and the join endpoint's
	ServerKey  = "server.key"
	ClientCert = "client.crt" // this machine's client certificate
	ClientKey  = "client.key"
)

// Pair is a certificate and its key, PEM-encoded.
type Pair struct {
	Cert, Key []byte
}

// CA is a lab's certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  Pair
}

// NewCA makes a lab's CA.
func NewCA(lab string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "klab-ca:" + lab, Organization: []string{"klab"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(10 * Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: Pair{Cert: pemOf("CERTIFICATE", der), Key: pemOf("EC PRIVATE KEY", kb)}}, nil
}

// Server signs a serving certificate for the addresses.
func (ca *CA) Server(name string, ips ...netip.Addr) (Pair, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{name, "localhost"},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	return ca.sign(tmpl)
}

// Client signs a client certificate whose common name is cn.
func (ca *CA) Client(cn string) (Pair, error) {
	return ca.sign(&x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

func (ca *CA) sign(tmpl *x509.Certificate) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(Validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Pair{}, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{Cert: pemOf("CERTIFICATE", der), Key: pemOf("EC PRIVATE KEY", kb)}, nil
}

// Hash is the CA's pin as kubeadm prints it: "sha256:" and the hex
// SHA-256 of the certificate's SubjectPublicKeyInfo.
func Hash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ValidHash checks the form of a pin given on a command line.
func ValidHash(h string) error {
	hexPart, ok := strings.CutPrefix(h, "sha256:")
	if b, err := hex.DecodeString(hexPart); !ok || err != nil || len(b) != sha256.Size {
		return fmt.Errorf("--discovery-token-ca-cert-hash %q is not \"sha256:\" and 64 hex digits: copy it from the 'klab token create' output", h)
	}
	return nil
}

// Pinned is a TLS client config that trusts a server whose chain ends in
// a CA with the pin hash and whose certificate that CA signed for the
// server's address (kubeadm's token discovery does the same check before
// it trusts the cluster CA). On success, ca receives the CA.
func Pinned(hash string, ca **x509.Certificate) *tls.Config {
	return &tls.Config{
		InsecureSkipVerify: true, // verified below, against the pin
		MinVersion:         tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) < 2 {
				return errors.New("the server sent no CA certificate with its own")
			}
			root := cs.PeerCertificates[len(cs.PeerCertificates)-1]
			if got := Hash(root); got != hash {
				return &PinError{Got: got, Want: hash}
			}
			pool := x509.NewCertPool()
			pool.AddCert(root)
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: cs.ServerName}); err != nil {
				return fmt.Errorf("its certificate is not its CA's for %s: %v", cs.ServerName, err)
			}
			*ca = root
			return nil
		},
	}
}

// PinError is a server whose CA does not have the pinned hash.
type PinError struct{ Got, Want string }

func (e *PinError) Error() string {
	return fmt.Sprintf("its CA's public key hash is %s, not the %s the join command gives", e.Got, e.Want)
}

// Write writes a PKI file (keys 0600).
func Write(dir, name string, b []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), b, 0o600)
}

// LoadCA reads a lab's CA from dir.
func LoadCA(dir string) (*CA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, fmt.Errorf("%s: not PEM", dir)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: Pair{Cert: cb, Key: kb}}, nil
}

// ParseCert decodes one PEM certificate.
func ParseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// ClientTLS is the TLS config of a client with the certificate and key
// files in dir, trusting the CA there.
func ClientTLS(dir string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ClientCert), filepath.Join(dir, ClientKey))
	if err != nil {
		return nil, fmt.Errorf("the lab's client certificate in %s: %v", dir, err)
	}
	cb, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cb) {
		return nil, fmt.Errorf("%s: no CA certificate", filepath.Join(dir, CACert))
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
