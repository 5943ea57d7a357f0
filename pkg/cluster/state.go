package cluster

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/klab-dev/klab/pkg/explain"
)

// Backend names a way to carry pod traffic between nodes.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
)

// Reserved object names: namespaces klab creates for the lab itself.
const (
	UnderlayName = "underlay"
	ExternalName = "external"
	// UnderlayBridge is the bridge inside the underlay namespace that
	// joins the nodes' eth0 interfaces, like the switch between VMs.
	UnderlayBridge = "underlay0"
	// NodeUplink is a node's underlay interface, as on a real VM.
	NodeUplink = "eth0"
	// PodIface is a pod's interface, as the CNI plugin names it.
	PodIface = "eth0"
)

// Defaults are seed 003's addresses.
var (
	DefaultClusterCIDR  = netip.MustParsePrefix("10.244.0.0/16")
	DefaultServiceCIDR  = netip.MustParsePrefix("10.96.0.0/12")
	DefaultUnderlayCIDR = netip.MustParsePrefix("192.168.1.0/24")
	// ExternalCIDR is the network of the lab's external host (TEST-NET-3,
	// RFC 5737: reserved for documentation, never routed on the internet).
	ExternalCIDR    = netip.MustParsePrefix("203.0.113.0/24")
	ExternalIP      = netip.MustParseAddr("203.0.113.10")
	ExternalGateway = netip.MustParseAddr("203.0.113.1")
)

// Lab is the persisted desired state of one lab.
type Lab struct {
	Name            string       `json:"name"`
	Backend         string       `json:"backend"`
	ClusterCIDR     netip.Prefix `json:"clusterCIDR"`
	ServiceCIDR     netip.Prefix `json:"serviceCIDR"`
	UnderlayCIDR    netip.Prefix `json:"underlayCIDR"`
	UnderlayGateway netip.Addr   `json:"underlayGateway"`
	UnderlayMTU     int          `json:"underlayMTU"`
	VNI             int          `json:"vni"`
	Port            int          `json:"port"`
	Created         time.Time    `json:"created"`
	Nodes           []*Node      `json:"nodes"`
	Pods            []*Pod       `json:"pods"`
	Services        []*Service   `json:"services,omitempty"`
	Servers         []*Server    `json:"servers,omitempty"`
}

// Node is a Kubernetes node: a namespace on the underlay with a pod subnet.
type Node struct {
	Name    string       `json:"name"`
	IP      netip.Addr   `json:"ip"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	VtepMAC string       `json:"vtepMAC,omitempty"`
}

// Pod is a pod: a namespace plugged into its node's cni0.
type Pod struct {
	Name     string            `json:"name"`
	Node     string            `json:"node"`
	IP       netip.Addr        `json:"ip"`
	HostVeth string            `json:"hostVeth"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// Server is a background traffic server started by klab in a namespace.
type Server struct {
	Target string `json:"target"`
	Proto  string `json:"proto"`
	Port   int    `json:"port"`
	PID    int    `json:"pid"`
	Log    string `json:"log"`
}

// MTU of pod-facing links: the underlay's minus VXLAN overhead, or the
// underlay's own with host-gw.
func (l *Lab) MTU() int {
	if l.Backend == BackendVXLAN {
		return l.UnderlayMTU - 50
	}
	return l.UnderlayMTU
}

// Node returns the node with that name, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Pod returns the pod with that name, or nil.
func (l *Lab) Pod(name string) *Pod {
	for _, p := range l.Pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// PodsOn lists the pods of a node.
func (l *Lab) PodsOn(node string) []*Pod {
	var out []*Pod
	for _, p := range l.Pods {
		if p.Node == node {
			out = append(out, p)
		}
	}
	return out
}

// Names lists node and pod names (they share one namespace of names).
func (l *Lab) Names() []string {
	var out []string
	for _, n := range l.Nodes {
		out = append(out, n.Name)
	}
	for _, p := range l.Pods {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// MAC derives a stable, locally administered unicast MAC for one role of
// one object in a lab, so that a rebuilt lab looks the same and a crashed
// build can be recognised.
func MAC(lab, object, role string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(lab + "/" + object + "/" + role))
	mac := net.HardwareAddr(append([]byte(nil), sum[:6]...))
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}

// StateFile is where a lab's state lives.
func StateFile(stateDir, lab string) string { return filepath.Join(stateDir, lab, "state.json") }

// ErrNoLab is returned when a lab has no state.
var ErrNoLab = errors.New("no such lab")

// Load reads a lab's state.
func Load(stateDir, lab string) (*Lab, error) {
	b, err := os.ReadFile(StateFile(stateDir, lab))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab %q: %w", lab, ErrNoLab)
	}
	if err != nil {
		return nil, fmt.Errorf("read state of lab %q: %w", lab, err)
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("state of lab %q is corrupt (%v): remove the lab with 'klab destroy %s'", lab, err, lab)
	}
	return &l, nil
}

// Save writes a lab's state atomically (write, fsync, rename), readable only
// by root.
func Save(stateDir string, l *Lab) error {
	p := StateFile(stateDir, l.Name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	// The lab directory may have been created by a file written earlier in
	// a build (subnet.env, ipam) with a wider mode: it is klab's own.
	if err := os.Chmod(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".state-*.json")
	if err != nil {
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	explain.CrashPoint() // a crash here leaves the old state and a temp file
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	explain.CrashPoint()
	return nil
}

// Labs lists the labs that have state in stateDir.
func Labs(stateDir string) ([]string, error) {
	dirs, err := labDirs(stateDir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range dirs {
		if _, err := os.Stat(StateFile(stateDir, d)); err == nil {
			out = append(out, d)
		}
	}
	return out, nil
}
