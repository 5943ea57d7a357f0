package cni

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSubnetEnv(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    SubnetEnv
		wantErr string
	}{
		{"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			SubnetEnv{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24"), 1450, true}, ""},
		{"FLANNEL_NETWORK=192.168.128.0/18\nFLANNEL_SUBNET=192.168.130.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n",
			SubnetEnv{netip.MustParsePrefix("192.168.128.0/18"), netip.MustParsePrefix("192.168.130.0/24"), 1500, false}, ""},
		{"FLANNEL_NETWORK=10.244.0.0/16\n", SubnetEnv{}, "lacks"},
		{"FLANNEL_MTU=big\n", SubnetEnv{}, "FLANNEL_MTU=big"},
	} {
		got, err := ParseSubnetEnv([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseSubnetEnv(%q) error %v, want one containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSubnetEnv(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// The chain is what flannel's doCmdAdd hands the bridge plugin: type
// bridge named after the network, ipMasq the opposite of FLANNEL_IPMASQ,
// FLANNEL_MTU, isGateway, the conflist's delegate keys, host-local with the
// subnet as its one range and the network as a route; then portmap.
func TestDelegateList(t *testing.T) {
	env := SubnetEnv{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.2.0/24"), 1450, true}
	b, err := DelegateList(env, "/state/cni/node2/networks")
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Name       string           `json:"name"`
		CNIVersion string           `json:"cniVersion"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatal(err)
	}
	if l.Name != "cbr0" || l.CNIVersion != Version || len(l.Plugins) != 2 || l.Plugins[1]["type"] != "portmap" {
		t.Fatalf("chain: %s", b)
	}
	br := l.Plugins[0]
	for k, want := range map[string]any{"type": "bridge", "name": "cbr0", "ipMasq": false, "mtu": 1450.0, "isGateway": true, "isDefaultGateway": true, "hairpinMode": true} {
		if br[k] != want {
			t.Errorf("bridge %s = %v, want %v", k, br[k], want)
		}
	}
	ipam, _ := json.Marshal(br["ipam"])
	want := `{"dataDir":"/state/cni/node2/networks","ranges":[[{"subnet":"10.244.2.0/24"}]],"routes":[{"dst":"10.244.0.0/16","gw":"10.244.2.1"}],"type":"host-local"}`
	if string(ipam) != want {
		t.Errorf("ipam = %s\nwant   %s", ipam, want)
	}
	confs, err := PluginConfs(b)
	if err != nil || !strings.Contains(string(confs["portmap"]), `"name": "cbr0"`) || !strings.Contains(string(confs["bridge"]), `"cniVersion": "1.0.0"`) {
		t.Errorf("PluginConfs: %v, %v", confs, err)
	}
}

func TestShellCommand(t *testing.T) {
	b, _ := DelegateList(SubnetEnv{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24"), 1450, true}, "/d")
	a := Attachment{HostNS: "klab.x.node1", NetNS: "klab.x.pod-a", ContainerID: "pod-a", IfName: "eth0", Args: [][2]string{{"IgnoreUnknown", "1"}}}
	add := ShellCommand("ADD", "/c", b, a, nil)
	lines := strings.Split(add, "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "r=$(ip netns exec klab.x.node1 env CNI_COMMAND=ADD CNI_CONTAINERID=pod-a CNI_NETNS=/run/netns/klab.x.pod-a CNI_IFNAME=eth0 CNI_ARGS='IgnoreUnknown=1' CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge < /c/bridge.json)") ||
		!strings.Contains(lines[1], `head -c -2 /c/portmap.json; printf ', "prevResult": %s}\n' "$r"; } | ip netns exec klab.x.node1`) ||
		lines[2] != `printf '%s\n' "$r"` {
		t.Errorf("ADD rendering:\n%s", add)
	}
	del := ShellCommand("DEL", "/c", b, a, nil)
	if l := strings.Split(del, "\n"); len(l) != 2 || !strings.HasSuffix(l[0], "/usr/lib/cni/portmap < /c/portmap.json") || !strings.HasSuffix(l[1], "/usr/lib/cni/bridge < /c/bridge.json") {
		t.Errorf("DEL rendering (portmap first):\n%s", del)
	}
}

func TestMissing(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bridge"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "portmap"), []byte("not executable"), 0o644)
	if got := strings.Join(Missing([]string{dir}, "bridge", "portmap", "host-local"), ","); got != "portmap,host-local" {
		t.Errorf("Missing = %s, want portmap,host-local", got)
	}
}
