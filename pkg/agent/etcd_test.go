package agent

import (
	"slices"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

func TestParseEndpoints(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: "http://10.0.0.5:2379", want: []string{"http://10.0.0.5:2379"}},
		{in: "https://a:2379, https://b:2379/", want: []string{"https://a:2379", "https://b:2379"}},
		{in: "10.0.0.5:2379", err: `"10.0.0.5:2379" is not an etcd client URL`},
		{in: "http://10.0.0.5", err: "is not an etcd client URL"},
		{in: "unix:///run/etcd.sock", err: "is not an etcd client URL"},
		{in: "http://10.0.0.5:2379/v3", err: "is not an etcd client URL"},
		{in: "http://u:p@10.0.0.5:2379", err: "is not an etcd client URL"},
		{in: " , ", err: "names no endpoint"},
	} {
		got, err := ParseEndpoints(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseEndpoints(%q) = %v, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseEndpoints(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestEtcdConfigValidate(t *testing.T) {
	dir := t.TempDir()
	a := testutil.NewPKI(t, dir, "a", "10.0.0.5")
	b := testutil.NewPKI(t, dir, "b", "10.0.0.5")
	https := []string{"https://10.0.0.5:2379"}
	for _, tc := range []struct {
		name string
		cfg  EtcdConfig
		err  string
	}{
		{"plain http", EtcdConfig{Endpoints: []string{"http://10.0.0.5:2379"}}, ""},
		{"a prefix", EtcdConfig{Endpoints: []string{"http://10.0.0.5:2379"}, Prefix: "/lab-a/network"}, ""},
		{"prefix without slash", EtcdConfig{Endpoints: []string{"http://10.0.0.5:2379"}, Prefix: "lab-a"}, "is not a key prefix"},
		{"prefix with trailing slash", EtcdConfig{Endpoints: []string{"http://10.0.0.5:2379"}, Prefix: "/lab-a/"}, "is not a key prefix"},
		{"https without CA", EtcdConfig{Endpoints: https}, "no --etcd-cafile is given"},
		{"CA only", EtcdConfig{Endpoints: https, CAFile: a.CA}, ""},
		{"CA and client certificate", EtcdConfig{Endpoints: https, CAFile: a.CA, CertFile: a.ClientCert, KeyFile: a.ClientKey}, ""},
		{"TLS on http", EtcdConfig{Endpoints: []string{"http://10.0.0.5:2379"}, CAFile: a.CA}, "is plain http: write https://"},
		{"missing CA", EtcdConfig{Endpoints: https, CAFile: dir + "/none.pem"}, "--etcd-cafile " + dir + "/none.pem: no such file or directory"},
		{"CA not PEM", EtcdConfig{Endpoints: https, CAFile: a.ClientKey}, "holds no PEM certificate"},
		{"certificate without key", EtcdConfig{Endpoints: https, CAFile: a.CA, CertFile: a.ClientCert}, "go together"},
		{"missing key", EtcdConfig{Endpoints: https, CAFile: a.CA, CertFile: a.ClientCert, KeyFile: dir + "/none-key.pem"}, "--etcd-keyfile " + dir + "/none-key.pem: no such file"},
		{"key of another certificate", EtcdConfig{Endpoints: https, CAFile: a.CA, CertFile: a.ClientCert, KeyFile: b.ClientKey}, "do not make a client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate = %v; want %q", err, tc.err)
			}
		})
	}
}

func TestEtcdConfigKeyPrefix(t *testing.T) {
	if p := (EtcdConfig{}).KeyPrefix(); p != DefaultPrefix {
		t.Errorf("default prefix %q", p)
	}
	if p := (EtcdConfig{Prefix: "/x"}).KeyPrefix(); p != "/x" {
		t.Errorf("prefix %q", p)
	}
}
