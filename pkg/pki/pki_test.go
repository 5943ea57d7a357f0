package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestPinned runs a TLS server with a lab CA's serving certificate and
// checks the pinned client: the right pin trusts it and returns the CA,
// another pin is a PinError, a server of another CA fails.
func TestPinned(t *testing.T) {
	ca, err := NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewCA("other")
	serve := func(ca *CA) string {
		srv, err := ca.Server("etcd", netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(append(srv.Cert, ca.PEM.Cert...), srv.Key)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	dial := func(addr, pin string) (*x509.Certificate, error) {
		var got *x509.Certificate
		cfg := Pinned(pin, &got)
		cfg.ServerName = "127.0.0.1"
		c, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			c.Close()
		}
		return got, err
	}
	addr := serve(ca)
	if got, err := dial(addr, Hash(ca.Cert)); err != nil || got == nil || !got.Equal(ca.Cert) {
		t.Fatalf("right pin: %v %v", got, err)
	}
	var pe *PinError
	if _, err := dial(addr, Hash(other.Cert)); !errors.As(err, &pe) {
		t.Fatalf("wrong pin: %v", err)
	}
	if _, err := dial(serve(other), Hash(ca.Cert)); !errors.As(err, &pe) {
		t.Fatalf("another CA's server: %v", err)
	}
}

func TestValidHash(t *testing.T) {
	for h, ok := range map[string]bool{
		"sha256:" + strings.Repeat("ab", 32): true,
		"sha256:" + strings.Repeat("ab", 31): false,
		strings.Repeat("ab", 32):             false,
		"sha256:" + strings.Repeat("zz", 32): false,
		"":                                   false,
	} {
		if err := ValidHash(h); (err == nil) != ok {
			t.Errorf("ValidHash(%q) = %v", h, err)
		}
	}
}

// TestClientCertChain checks that a client certificate verifies against
// its CA for client auth, and not against another.
func TestClientCertChain(t *testing.T) {
	ca, _ := NewCA("t")
	other, _ := NewCA("o")
	p, err := ca.Client("klab-machine:m2")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(p.Cert)
	if err != nil || c.Subject.CommonName != "klab-machine:m2" {
		t.Fatalf("%v %v", c, err)
	}
	for _, tc := range []struct {
		ca *CA
		ok bool
	}{{ca, true}, {other, false}} {
		pool := x509.NewCertPool()
		pool.AddCert(tc.ca.Cert)
		_, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if (err == nil) != tc.ok {
			t.Errorf("verify against %s: %v", tc.ca.Cert.Subject.CommonName, err)
		}
	}
}
