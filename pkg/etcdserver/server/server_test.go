package server

import (
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/etcdserver"
)

// The Config klab-etcd parses becomes the embedded server's: every URL
// list, the member and cluster settings, fsync, logging and client TLS.
func TestConfig(t *testing.T) {
	dir := t.TempDir()
	c := etcdserver.Lab("eb-s", dir, netip.MustParseAddr("192.168.1.100"))
	c.ExtraListenClientURLs = []string{"https://10.0.0.5:2379"}
	c.CertFile, c.KeyFile, c.TrustedCAFile, c.ClientCertAuth = "/p/s.crt", "/p/s.key", "/p/ca.crt", true
	e, err := Config(c)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{
		"listen-client":  urlsString(e.ListenClientUrls),
		"advertise":      urlsString(e.AdvertiseClientUrls),
		"listen-peer":    urlsString(e.ListenPeerUrls),
		"advertise-peer": urlsString(e.AdvertisePeerUrls),
	}
	want := map[string]string{
		"listen-client":  "http://192.168.1.100:2379,http://127.0.0.1:2379,https://10.0.0.5:2379",
		"advertise":      "http://192.168.1.100:2379",
		"listen-peer":    "http://192.168.1.100:2380",
		"advertise-peer": "http://192.168.1.100:2380",
	}
	for k := range want {
		if got[k] != want[k] {
			t.Errorf("%s URLs: %s, want %s", k, got[k], want[k])
		}
	}
	if e.Name != "control-plane" || e.Dir != dir+"/data" || e.InitialCluster != "control-plane=http://192.168.1.100:2380" ||
		e.InitialClusterToken != "klab.eb-s" || e.ClusterState != "new" || !e.UnsafeNoFsync || e.TickMs != 10 || e.ElectionMs != 100 ||
		e.Logger != "zap" || e.LogLevel != "warn" || len(e.LogOutputs) != 1 || e.LogOutputs[0] != dir+"/etcd.log" {
		t.Errorf("embed config: %+v", e)
	}
	tls := e.ClientTLSInfo
	if tls.CertFile != "/p/s.crt" || tls.KeyFile != "/p/s.key" || tls.TrustedCAFile != "/p/ca.crt" || !tls.ClientCertAuth {
		t.Errorf("client TLS: %+v", tls)
	}
	// Validate opens the log file (in dir) and checks the URLs.
	if err := e.Validate(); err != nil {
		t.Errorf("etcd refuses the config: %v", err)
	}
}

func urlsString(us []url.URL) string {
	var s []string
	for _, u := range us {
		s = append(s, u.String())
	}
	return strings.Join(s, ",")
}
