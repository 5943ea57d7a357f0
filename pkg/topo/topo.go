package topo

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/inspect"
	"github.com/klab-dev/klab/pkg/netns"
)

// Topology is a lab as the kernel has it.
type Topology struct {
	Lab      string    `json:"lab"`
	Backend  string    `json:"backend"`
	Underlay Underlay  `json:"underlay"`
	External *Host     `json:"external,omitempty"`
	Nodes    []Node    `json:"nodes"`
	Tunnels  []Tunnel  `json:"tunnels"`
	Services []Service `json:"services"`
	// Problems are the lab-wide damages (a missing underlay).
	Problems []string `json:"problems,omitempty"`
}

// Underlay is the lab's switch between the nodes.
type Underlay struct {
	NS     string   `json:"ns"`
	Bridge string   `json:"bridge"`
	CIDR   string   `json:"cidr"`
	Ports  []string `json:"ports"`
	Exists bool     `json:"exists"`
}

// Host is the lab's external host.
type Host struct {
	Name  string   `json:"name"`
	NS    string   `json:"ns"`
	Addrs []string `json:"addrs"`
}

// Node is one node's network devices.
type Node struct {
	Name   string `json:"name"`
	NS     string `json:"ns"`
	IP     string `json:"ip"`      // eth0's address as the kernel has it
	Subnet string `json:"podCIDR"` // the node's pod subnet (its lease)
	// Bridge is the pod bridge (cni0) with its gateway address; empty when
	// the node has none (Calico routes each pod's veth instead).
	Bridge     string `json:"bridge,omitempty"`
	BridgeAddr string `json:"bridgeAddr,omitempty"`
	VTEP       *VTEP  `json:"vtep,omitempty"`
	Pods       []Pod  `json:"pods"`
	// Damage lists what `klab list` would flag about this node.
	Damage []string `json:"damage,omitempty"`
}

// VTEP is a node's VXLAN device.
type VTEP struct {
	Dev   string `json:"dev"`
	VNI   int    `json:"vni"`
	Port  int    `json:"port"`
	MAC   string `json:"mac"`
	Local string `json:"local"`
	Addr  string `json:"addr,omitempty"`
}

// Pod is one pod's interface.
type Pod struct {
	Name     string   `json:"name"`
	Node     string   `json:"node"`
	NS       string   `json:"ns"`
	IP       string   `json:"ip"`
	HostVeth string   `json:"hostVeth"`
	Damage   []string `json:"damage,omitempty"`
}

// Tunnel kinds.
const (
	TunnelVXLAN = "vxlan" // an FDB entry of flannel.1 towards the peer
	TunnelRoute = "route" // a route to the peer's pod subnet via its eth0 (host-gw, BGP)
)

// Tunnel is how one node reaches another node's pods.
type Tunnel struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Kind   string `json:"kind"`
	VNI    int    `json:"vni,omitempty"`
	Port   int    `json:"port,omitempty"`
	Dst    string `json:"dst"`              // the peer's underlay address
	Subnet string `json:"subnet,omitempty"` // the peer subnet routed that way
}

// Service is a Service with its ClusterIP and endpoints.
type Service struct {
	Name      string   `json:"name"`
	Type      string   `json:"type,omitempty"`
	ClusterIP string   `json:"clusterIP,omitempty"`
	Ports     []string `json:"ports"`
	Endpoints []string `json:"endpoints"`
}

// Snapshots reads every namespace named in nss, in parallel (at most
// workers at a time), one inspect.Take each. A namespace that is missing or
// unreadable has no entry.
func Snapshots(nss []string, workers int) map[string]*inspect.Snapshot {
	if workers < 1 {
		workers = 8
	}
	out := make(map[string]*inspect.Snapshot, len(nss))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, workers)
	for _, ns := range nss {
		wg.Add(1)
		sem <- struct{}{}
		go func(ns string) {
			defer wg.Done()
			defer func() { <-sem }()
			h, err := netns.Handle(ns)
			if err != nil {
				return
			}
			defer h.Close()
			s, err := inspect.Take(h)
			if err != nil {
				return
			}
			mu.Lock()
			out[ns] = s
			mu.Unlock()
		}(ns)
	}
	wg.Wait()
	return out
}

// Read reads the topology of lab l from the kernel.
func Read(l *cluster.Lab) *Topology {
	nss := []string{netns.Name(l.Name, cluster.UnderlayName), netns.Name(l.Name, cluster.ExternalName)}
	for _, n := range l.Nodes {
		nss = append(nss, netns.Name(l.Name, n.Name))
	}
	for _, p := range l.Pods {
		nss = append(nss, netns.Name(l.Name, p.Name))
	}
	return Build(l, Snapshots(nss, 16))
}

// Build assembles the topology from the lab's roles and the snapshots of
// its namespaces (by namespace name; a missing one does not exist). It is
// pure, so recorded labs can be drawn in tests.
func Build(l *cluster.Lab, snaps map[string]*inspect.Snapshot) *Topology {
	t := &Topology{Lab: l.Name, Backend: l.Backend}
	uns := netns.Name(l.Name, cluster.UnderlayName)
	t.Underlay = Underlay{NS: uns, Bridge: cluster.UnderlayBridge, CIDR: l.UnderlayCIDR.String()}
	if s := snaps[uns]; s != nil {
		t.Underlay.Exists = true
		for _, k := range s.Links {
			if k.Master == cluster.UnderlayBridge {
				t.Underlay.Ports = append(t.Underlay.Ports, k.Name)
			}
		}
		if link(s, cluster.UnderlayBridge) == nil {
			t.Problems = append(t.Problems, fmt.Sprintf("the underlay namespace has no %s bridge (partly built): destroy the lab ('klab destroy %s') and build it again", cluster.UnderlayBridge, l.Name))
		}
	} else if len(l.Nodes) > 0 {
		t.Problems = append(t.Problems, fmt.Sprintf("the underlay namespace %s is missing: no node can reach another", uns))
	}
	ens := netns.Name(l.Name, cluster.ExternalName)
	if s := snaps[ens]; s != nil {
		h := &Host{Name: cluster.ExternalName, NS: ens}
		for _, a := range s.Addrs {
			if a.Dev != "lo" {
				h.Addrs = append(h.Addrs, a.CIDR)
			}
		}
		t.External = h
	}
	ports := map[string]bool{}
	for _, p := range t.Underlay.Ports {
		ports[p] = true
	}
	byIP := map[string]string{} // underlay address -> node
	for _, n := range l.Nodes {
		ns := netns.Name(l.Name, n.Name)
		node := Node{Name: n.Name, NS: ns, Subnet: n.PodCIDR.String()}
		s := snaps[ns]
		if s == nil {
			node.Damage = append(node.Damage, fmt.Sprintf("node %s has no namespace: remove it with 'klab node del %s --lab %s'", n.Name, n.Name, l.Name))
		} else {
			node.IP = addrOf(s, cluster.NodeUplink)
			if link(s, cluster.NodeUplink) == nil {
				node.Damage = append(node.Damage, partly("node", n.Name, cluster.NodeUplink, l.Name))
			}
			for _, k := range s.Links {
				switch {
				case k.Type == "bridge" && node.Bridge == "":
					node.Bridge, node.BridgeAddr = k.Name, addrOf(s, k.Name)
				case k.Type == "vxlan" && node.VTEP == nil:
					node.VTEP = &VTEP{Dev: k.Name, VNI: k.VNI, Port: k.Port, MAC: k.MAC, Local: k.Local, Addr: addrOf(s, k.Name)}
				}
			}
			if l.Backend == cluster.BackendVXLAN && node.VTEP == nil {
				node.Damage = append(node.Damage, partly("node", n.Name, fmt.Sprintf("flannel.%d", l.VNI), l.Name))
			}
			if (l.Backend == cluster.BackendVXLAN || l.Backend == cluster.BackendHostGW) && node.Bridge == "" {
				node.Damage = append(node.Damage, partly("node", n.Name, "cni0", l.Name))
			}
			if t.Underlay.Exists && !ports[n.Name] {
				node.Damage = append(node.Damage, fmt.Sprintf("node %s has no port on the underlay bridge: 'klab node del %s --lab %s' and add it again", n.Name, n.Name, l.Name))
			}
		}
		if node.IP != "" {
			byIP[node.IP] = n.Name
		}
		for _, p := range l.PodsOn(n.Name) {
			pns := netns.Name(l.Name, p.Name)
			pod := Pod{Name: p.Name, Node: n.Name, NS: pns, HostVeth: p.HostVeth}
			ps := snaps[pns]
			switch {
			case ps == nil:
				pod.Damage = append(pod.Damage, fmt.Sprintf("pod %s has no namespace: remove it with 'klab pod del %s --lab %s'", p.Name, p.Name, l.Name))
			case link(ps, cluster.PodIface) == nil:
				pod.Damage = append(pod.Damage, fmt.Sprintf("pod %s has no %s (partly built): 'klab pod del %s --lab %s' and add it again", p.Name, cluster.PodIface, p.Name, l.Name))
			default:
				pod.IP = addrOf(ps, cluster.PodIface)
			}
			if s != nil && link(s, p.HostVeth) == nil {
				pod.Damage = append(pod.Damage, partly("node", n.Name, p.HostVeth, l.Name))
			}
			node.Pods = append(node.Pods, pod)
		}
		t.Nodes = append(t.Nodes, node)
	}
	// Tunnels: what each node's kernel uses to reach a peer.
	for _, node := range t.Nodes {
		s := snaps[node.NS]
		if s == nil {
			continue
		}
		seen := map[string]bool{}
		if node.VTEP != nil {
			for _, f := range s.FDB {
				peer := byIP[f.Dst]
				if f.Dev != node.VTEP.Dev || peer == "" || peer == node.Name || seen[peer] {
					continue
				}
				seen[peer] = true
				t.Tunnels = append(t.Tunnels, Tunnel{From: node.Name, To: peer, Kind: TunnelVXLAN, VNI: node.VTEP.VNI, Port: node.VTEP.Port, Dst: f.Dst, Subnet: vxlanSubnet(s, node.VTEP.Dev, f.MAC)})
			}
		}
		for _, r := range s.Routes {
			peer := byIP[r.Gw]
			if r.Gw == "" || peer == "" || peer == node.Name || seen[peer] || r.Dst == "default" {
				continue
			}
			seen[peer] = true
			t.Tunnels = append(t.Tunnels, Tunnel{From: node.Name, To: peer, Kind: TunnelRoute, Dst: r.Gw, Subnet: r.Dst})
		}
	}
	sort.Slice(t.Tunnels, func(i, j int) bool {
		a, b := t.Tunnels[i], t.Tunnels[j]
		return a.From+"\x00"+a.To < b.From+"\x00"+b.To
	})
	for _, sv := range l.Services {
		// The ready pods it selects (or names): kube-proxy's endpoints.
		out := Service{Name: sv.Name, Type: sv.Type, Endpoints: []string{}}
		for _, p := range l.EndpointPods(sv) {
			out.Endpoints = append(out.Endpoints, p.Name)
		}
		if sv.ClusterIP.IsValid() {
			out.ClusterIP = sv.ClusterIP.String()
		}
		for _, p := range sv.Ports {
			out.Ports = append(out.Ports, portString(string(p.Protocol), p.Port, p.TargetPort, p.NodePort))
		}
		t.Services = append(t.Services, out)
	}
	return t
}

// vxlanSubnet finds the pod subnet routed through dev via the neighbour
// whose MAC is mac (flannel's three entries per peer: neighbour, FDB,
// route).
func vxlanSubnet(s *inspect.Snapshot, dev, mac string) string {
	for _, n := range s.Neighs {
		if n.Dev != dev || n.MAC != mac {
			continue
		}
		for _, r := range s.Routes {
			if r.Dev == dev && r.Gw == n.IP {
				return r.Dst
			}
		}
	}
	return ""
}

func partly(kind, name, dev, lab string) string {
	return fmt.Sprintf("%s %s has no %s (partly built): 'klab %s del %s --lab %s' and add it again, or 'klab destroy %s'", kind, name, dev, kind, name, lab, lab)
}

func link(s *inspect.Snapshot, name string) *inspect.Link {
	for i := range s.Links {
		if s.Links[i].Name == name {
			return &s.Links[i]
		}
	}
	return nil
}

// addrOf is dev's first IPv4 address, without its prefix length.
func addrOf(s *inspect.Snapshot, dev string) string {
	for _, a := range s.Addrs {
		if a.Dev == dev {
			if p, err := netip.ParsePrefix(a.CIDR); err == nil {
				return p.Addr().String()
			}
			return a.CIDR
		}
	}
	return ""
}

func portString(proto string, port, target, nodePort int) string {
	var b strings.Builder
	if proto == "" {
		proto = "tcp"
	}
	b.WriteString(strconv.Itoa(port))
	if target != 0 && target != port {
		b.WriteString("->" + strconv.Itoa(target))
	}
	b.WriteString("/" + strings.ToLower(proto))
	if nodePort > 0 {
		b.WriteString(" nodePort " + strconv.Itoa(nodePort))
	}
	return b.String()
}

// Damaged reports whether anything in the topology is damaged.
func (t *Topology) Damaged() bool {
	if len(t.Problems) > 0 {
		return true
	}
	for _, n := range t.Nodes {
		if len(n.Damage) > 0 {
			return true
		}
		for _, p := range n.Pods {
			if len(p.Damage) > 0 {
				return true
			}
		}
	}
	return false
}
