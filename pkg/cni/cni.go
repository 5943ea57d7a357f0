package cni

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/klab-dev/klab/pkg/netns"
)

// DefaultPluginDir is where Debian's containernetworking-plugins installs
// the plugins (upstream's default is /opt/cni/bin).
const DefaultPluginDir = "/usr/lib/cni"

// Paths are the directories searched for plugins (CNI_PATH):
// KLAB_CNI_PATH (colon-separated) if set, else DefaultPluginDir.
func Paths() []string {
	if v := os.Getenv("KLAB_CNI_PATH"); v != "" {
		return strings.Split(v, ":")
	}
	return []string{DefaultPluginDir}
}

// NetworkName is kube-flannel's network name; host-local keeps its files in
// <dataDir>/cbr0.
const NetworkName = "cbr0"

// Version is the CNI spec version of the chain: 1.0.0, the newest the
// Debian plugins (1.1.1) speak, so CHECK is supported (kube-flannel's own
// file still says 0.3.1, which has no CHECK).
const Version = "1.0.0"

// Plugins are the plugin binaries a pod's wiring runs: the flannel chain,
// and loopback, which containerd's CRI runs for every pod before it.
var Plugins = []string{"bridge", "host-local", "portmap", "loopback"}

// LoopbackConf is containerd's loopback network (pkg/cri: "cni-loopback"):
// it brings lo up in the pod; the network's own chain never does.
func LoopbackConf() []byte {
	return []byte(`{"cniVersion": "` + Version + `", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}`)
}

// SubnetEnv is flanneld's /run/flannel/subnet.env.
type SubnetEnv struct {
	Network netip.Prefix // FLANNEL_NETWORK
	Subnet  netip.Prefix // FLANNEL_SUBNET, masked (the file holds the gateway address)
	MTU     int          // FLANNEL_MTU
	IPMasq  bool         // FLANNEL_IPMASQ
}

// ParseSubnetEnv reads subnet.env's KEY=VALUE lines, as the flannel CNI
// plugin's loadFlannelSubnetEnv does.
func ParseSubnetEnv(b []byte) (SubnetEnv, error) {
	var e SubnetEnv
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			e.Subnet, err = netip.ParsePrefix(v)
			e.Subnet = e.Subnet.Masked()
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return e, fmt.Errorf("subnet.env: %s=%s: %w", k, v, err)
		}
	}
	if !e.Network.IsValid() || !e.Subnet.IsValid() || e.MTU == 0 {
		return e, fmt.Errorf("subnet.env lacks FLANNEL_NETWORK, FLANNEL_SUBNET or FLANNEL_MTU: is flanneld (klab node add) done on this node?")
	}
	return e, nil
}

// FlannelConflist is kube-flannel's 10-flannel.conflist (its cni-conf.json),
// as it lies in /etc/cni/net.d on every node of a flannel cluster.
func FlannelConflist() []byte {
	return []byte(`{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
`)
}

// DelegateList is the chain the runtime effectively runs on a flannel node:
// kube-flannel's conflist with the flannel plugin replaced by the bridge
// config it delegates to (doCmdAdd: name, type bridge, ipMasq = !FLANNEL_IPMASQ,
// mtu = FLANNEL_MTU, isGateway; getDelegateIPAM: host-local with the node's
// subnet as its one range and the cluster network as a route). dataDir is
// where host-local keeps its files (<dataDir>/cbr0/<ip>).
//
// One deviation: flannel writes the cluster route without "gw" (the bridge
// plugin then routes it via the gateway anyway), but the bridge plugin's
// CHECK (1.1.1, ip.ValidateExpectedRoute) compares that missing gw with the
// kernel's route via 10.244.N.1 and fails; the gateway is spelled out, so
// the kernel state is the same and CHECK passes.
func DelegateList(e SubnetEnv, dataDir string) ([]byte, error) {
	bridge := map[string]any{
		"type":             "bridge",
		"name":             NetworkName,
		"hairpinMode":      true,
		"isDefaultGateway": true,
		"isGateway":        true,
		"ipMasq":           !e.IPMasq,
		"mtu":              e.MTU,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": e.Subnet.String()}}},
			"routes":  []map[string]string{{"dst": e.Network.String(), "gw": gateway(e.Subnet).String()}},
			"dataDir": dataDir,
		},
	}
	list := map[string]any{
		"name":       NetworkName,
		"cniVersion": Version,
		"plugins":    []any{bridge, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}}},
	}
	return json.MarshalIndent(list, "", "  ")
}

// Attachment is one container attachment: the runtime's side of a CNI call.
type Attachment struct {
	HostNS      string // namespace the plugins run in (the node)
	NetNS       string // the container's namespace (the pod), by name under /run/netns
	ContainerID string // CNI_CONTAINERID
	IfName      string // CNI_IFNAME, eth0
	Args        [][2]string
}

func (a Attachment) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: netns.Path(a.NetNS), IfName: a.IfName, Args: a.Args}
}

// Runner executes CNI plugin chains through libcni.
type Runner struct {
	Paths    []string // CNI_PATH: directories searched for plugin binaries
	CacheDir string   // libcni's cache of results and configs (kubelet: /var/lib/cni)
}

// Result is what an ADD returned.
type Result struct {
	JSON     []byte       // the final result, as the runtime receives it
	Addr     netip.Prefix // the container's address
	Gateway  netip.Addr
	HostVeth string // the host-side interface (no sandbox)
	MAC      string // the container interface's MAC
}

func (r Runner) config() *libcni.CNIConfig {
	paths := r.Paths
	if len(paths) == 0 {
		paths = []string{DefaultPluginDir}
	}
	return libcni.NewCNIConfigWithCacheDir(paths, r.CacheDir, nil)
}

// Add runs ADD through the chain conflist for a, from a thread inside
// a.HostNS.
func (r Runner) Add(ctx context.Context, conflist []byte, a Attachment) (*Result, error) {
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	var res *Result
	err = netns.Do(a.HostNS, func() error {
		out, err := r.config().AddNetworkList(ctx, list, a.runtimeConf())
		if err != nil {
			return err
		}
		res, err = parseResult(out, a)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s (%s): %w", a.ContainerID, list.Name, err)
	}
	return res, nil
}

// Check runs CHECK through the chain: each plugin verifies what it set up.
func (r Runner) Check(ctx context.Context, conflist []byte, a Attachment) error {
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	return netns.Do(a.HostNS, func() error {
		if err := r.config().CheckNetworkList(ctx, list, a.runtimeConf()); err != nil {
			return fmt.Errorf("CNI CHECK %s (%s): %w", a.ContainerID, list.Name, err)
		}
		return nil
	})
}

// Del runs DEL through the chain, in reverse order; deleting what is gone
// succeeds (the spec requires it).
func (r Runner) Del(ctx context.Context, conflist []byte, a Attachment) error {
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	return netns.Do(a.HostNS, func() error {
		if err := r.config().DelNetworkList(ctx, list, a.runtimeConf()); err != nil {
			return fmt.Errorf("CNI DEL %s (%s): %w", a.ContainerID, list.Name, err)
		}
		return nil
	})
}

func parseResult(out types.Result, a Attachment) (*Result, error) {
	r100, err := types100.NewResultFromResult(out)
	if err != nil {
		return nil, fmt.Errorf("CNI result: %w", err)
	}
	b, err := json.MarshalIndent(out, "", "  ") // as the last plugin printed it
	if err != nil {
		return nil, err
	}
	out2 := &Result{JSON: b}
	for _, i := range r100.Interfaces {
		switch {
		case i.Sandbox == "" && out2.HostVeth == "" && i.Name != "cni0":
			out2.HostVeth = i.Name
		case i.Sandbox != "" && i.Name == a.IfName:
			out2.MAC = i.Mac
		}
	}
	for _, ip := range r100.IPs {
		if p, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok {
			ones, _ := ip.Address.Mask.Size()
			out2.Addr = netip.PrefixFrom(p, ones)
			out2.Gateway, _ = netip.AddrFromSlice(ip.Gateway.To4())
			break
		}
	}
	return out2, nil
}

// ShellCommand is the equivalent of a chain call by hand, cnitool-style:
// each plugin run from the host namespace with the CNI_* environment and
// its config (a file under confDir, see PluginConfs) on stdin. For ADD and
// CHECK each plugin after the first gets the previous result spliced into
// its config as prevResult (the file minus its closing brace), as libcni
// does; the last result is printed.
func ShellCommand(command, confDir string, list []byte, a Attachment, paths []string) string {
	if len(paths) == 0 {
		paths = []string{DefaultPluginDir}
	}
	var l struct {
		Plugins []map[string]any `json:"plugins"`
	}
	json.Unmarshal(list, &l)
	var kinds []string
	for _, p := range l.Plugins {
		if t, _ := p["type"].(string); t != "" {
			kinds = append(kinds, t)
		}
	}
	if command == "DEL" {
		slices.Reverse(kinds)
	}
	var args []string
	for _, kv := range a.Args {
		args = append(args, kv[0]+"="+kv[1])
	}
	env := fmt.Sprintf("ip netns exec %s env CNI_COMMAND=%s CNI_CONTAINERID=%s CNI_NETNS=%s CNI_IFNAME=%s CNI_ARGS='%s' CNI_PATH=%s",
		a.HostNS, command, a.ContainerID, netns.Path(a.NetNS), a.IfName, strings.Join(args, ";"), strings.Join(paths, ":"))
	var b strings.Builder
	for i, t := range kinds {
		conf := filepath.Join(confDir, t+".json")
		plugin := filepath.Join(paths[0], t)
		switch {
		case command == "DEL":
			fmt.Fprintf(&b, "%s %s < %s\n", env, plugin, conf)
		case i == 0:
			fmt.Fprintf(&b, "r=$(%s %s < %s)\n", env, plugin, conf)
		default:
			fmt.Fprintf(&b, "r=$({ head -c -2 %s; printf ', \"prevResult\": %%s}\\n' \"$r\"; } | %s %s)\n", conf, env, plugin)
		}
	}
	if command != "DEL" {
		b.WriteString(`printf '%s\n' "$r"`)
	}
	return strings.TrimRight(b.String(), "\n")
}

// PluginConfs splits a conflist into the stdin of each plugin as libcni
// builds it (name and cniVersion copied in), for ShellCommand's files.
func PluginConfs(list []byte) (map[string][]byte, error) {
	l, err := libcni.ConfListFromBytes(list)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, p := range l.Plugins {
		var m map[string]any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			return nil, err
		}
		m["name"], m["cniVersion"] = l.Name, l.CNIVersion
		b, _ := json.MarshalIndent(m, "", "  ")
		out[p.Network.Type] = append(b, '\n')
	}
	return out, nil
}

// Missing lists the plugins of names not found in any of paths.
func Missing(paths []string, names ...string) []string {
	if len(paths) == 0 {
		paths = []string{DefaultPluginDir}
	}
	var out []string
	for _, n := range names {
		found := false
		for _, d := range paths {
			if st, err := os.Stat(filepath.Join(d, n)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				found = true
				break
			}
		}
		if !found {
			out = append(out, n)
		}
	}
	return out
}

// gateway is a subnet's first address, the bridge's (host-local's default).
func gateway(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }
