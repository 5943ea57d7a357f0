package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	networkingv1 "k8s.io/api/networking/v1"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/klab-dev/klab/pkg/plan"
)

// Backend names a way to carry pod traffic between nodes.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	BackendCalico = "calico" // routed pods, BGP by BIRD (calico.go)
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
	DNS             bool         `json:"dns,omitempty"` // cluster DNS on (dns.go)
	ProxyMode       string       `json:"proxyMode,omitempty"`
	Created         time.Time    `json:"created"`
	Nodes           []*Node      `json:"nodes"`
	Namespaces      []*Namespace `json:"namespaces,omitempty"` // beyond the built-in ones
	Pods            []*Pod       `json:"pods"`
	Services        []*Service   `json:"services,omitempty"`
	// Policies are the NetworkPolicies applied (policies.go).
	Policies []*networkingv1.NetworkPolicy `json:"networkPolicies,omitempty"`
	Servers  []*Server                     `json:"servers,omitempty"`
	// Calico holds the calico backend's settings (calico.go).
	Calico *CalicoSettings `json:"calico,omitempty"`
	// ControlPlane is set when etcd and node agents run the lab
	// (controlplane.go).
	ControlPlane *ControlPlane `json:"controlPlane,omitempty"`
}

// Node is a Kubernetes node: a namespace on the underlay with a pod subnet.
type Node struct {
	Name    string       `json:"name"`
	IP      netip.Addr   `json:"ip"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	VtepMAC string       `json:"vtepMAC,omitempty"`
	// Blocks are the calico backend's IPAM blocks of this node, in the
	// order it claimed them; PodCIDR is the first (calico.go).
	Blocks []netip.Prefix `json:"blocks,omitempty"`
	// BGPStopped is set while 'klab calico bgp stop' keeps the node's
	// BIRD down: repair does not start it again.
	BGPStopped bool `json:"bgpStopped,omitempty"`
	// TunnelIP is the address of the node's vxlan.calico in Calico's VXLAN
	// mode: the first address of its first block (calico_vxlan.go).
	TunnelIP netip.Addr `json:"tunnelIP,omitempty"`
}

// Pod is a pod: a namespace plugged into its node's cni0.
type Pod struct {
	// Name is the pod's key: its name in default, "namespace/name" in any
	// other Kubernetes namespace (see namespaces.go).
	Name     string            `json:"name"`
	Node     string            `json:"node"`
	IP       netip.Addr        `json:"ip"`
	HostVeth string            `json:"hostVeth"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Ports are the containerPorts of a pod applied from a manifest.
	Ports []ContainerPort `json:"ports,omitempty"`
	// Unready is set while the pod is not ready (klab pod set-ready, or a
	// failing readinessProbe): it is no Service's endpoint then.
	Unready bool `json:"unready,omitempty"`
	// Hostname and Subdomain are spec.hostname and spec.subdomain, for
	// the pod's DNS records.
	Hostname  string `json:"hostname,omitempty"`
	Subdomain string `json:"subdomain,omitempty"`
	// Readiness is the pod's readinessProbe (see readiness.go).
	Readiness *ReadinessProbe `json:"readinessProbe,omitempty"`
	// CNI is set when the real CNI plugins wired the pod (cni.go).
	CNI bool `json:"cni,omitempty"`
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
	if l.Backend == BackendVXLAN || l.calicoVXLAN() {
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

// Pod returns the pod with that key or reference ("name", "default/name"
// or "namespace/name"), or nil.
func (l *Lab) Pod(ref string) *Pod {
	key := NormalizeKey(ref)
	for _, p := range l.Pods {
		if p.Name == key {
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
	op, err := SaveOp(stateDir, l)
	if err != nil {
		return err
	}
	return (&plan.Applier{}).Apply(plan.Plan{op})
}

// SaveOp is the operation that writes a lab's state file.
func SaveOp(stateDir string, l *Lab) (plan.Op, error) {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return plan.Op{}, fmt.Errorf("save state of lab %q: %w", l.Name, err)
	}
	return plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: StateFile(stateDir, l.Name), Data: append(b, '\n'), Mode: 0o600, State: true}}, nil
}

// savePlan is the state write of the lab as it stands, or nothing when
// the file already holds exactly that.
func (c *Cluster) savePlan() plan.Plan {
	op, err := SaveOp(c.StateDir, c.Lab)
	if err != nil {
		return plan.Plan{{Verb: plan.Exec, Proc: &plan.Proc{Cmd: "# " + err.Error(), Run: func() error { return err }}}}
	}
	if old, err := os.ReadFile(op.File.Path); err == nil && bytes.Equal(old, op.File.Data) {
		return nil
	}
	return plan.Plan{op}
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
