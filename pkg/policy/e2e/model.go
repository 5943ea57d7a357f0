package e2e

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/klab-dev/klab/pkg/policy"
)

// Namespaces, PodNames, Ports and Protocols of the model.
var (
	Namespaces = []string{"x", "y", "z"}
	PodNames   = []string{"a", "b", "c"}
	Ports      = []int32{80, 81}
	Protocols  = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}
	Nodes      = []string{"node1", "node2"}
)

// PodString is "namespace/pod", as upstream.
type PodString string

// AllPods lists the nine pods in order x/a, x/b, ... z/c.
func AllPods() []PodString {
	var out []PodString
	for _, ns := range Namespaces {
		for _, p := range PodNames {
			out = append(out, PodString(ns+"/"+p))
		}
	}
	return out
}

func (p PodString) split() (string, string) {
	ns, name, _ := strings.Cut(string(p), "/")
	return ns, name
}

// PortName is the upstream container port name, "serve-80-tcp".
func PortName(port int32, proto corev1.Protocol) string {
	return fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto)))
}

// NodeOf is the node a pod runs on: the nine pods alternate node1, node2
// in AllPods order, so every namespace has pods on both nodes and every
// case crosses nodes and stays on one.
func NodeOf(p PodString) string {
	for i, q := range AllPods() {
		if q == p {
			return Nodes[i%2]
		}
	}
	return ""
}

// IPOf is the pod's address: 10.244.1.x on node1, 10.244.2.x on node2.
func IPOf(p PodString) netip.Addr {
	for i, q := range AllPods() {
		if q == p {
			return netip.AddrFrom4([4]byte{10, 244, byte(1 + i%2), byte(10 + i)})
		}
	}
	return netip.Addr{}
}

// NodeIP is the node's underlay address.
func NodeIP(node string) netip.Addr {
	for i, n := range Nodes {
		if n == node {
			return netip.AddrFrom4([4]byte{192, 168, 100, byte(11 + i)})
		}
	}
	return netip.Addr{}
}

// State is the model with the case's policies and label updates, ready for
// policy.NewEvaluator or policy.Compile.
func State(c Case) policy.State {
	s := policy.State{Policies: c.Policies, NodeIPs: map[string][]netip.Addr{}}
	for _, n := range Nodes {
		s.NodeIPs[n] = []netip.Addr{NodeIP(n)}
	}
	for _, ns := range Namespaces {
		l := map[string]string{"ns": ns, corev1.LabelMetadataName: ns}
		for k, v := range c.NamespaceLabels[ns] {
			l[k] = v
		}
		s.Namespaces = append(s.Namespaces, policy.Namespace{Name: ns, Labels: l})
	}
	for _, p := range AllPods() {
		ns, name := p.split()
		l := map[string]string{"pod": name}
		for k, v := range c.PodLabels[p] {
			l[k] = v
		}
		pod := policy.Pod{Namespace: ns, Name: name, Labels: l, IP: IPOf(p), Node: NodeOf(p)}
		for _, port := range Ports {
			for _, proto := range Protocols {
				pod.Ports = append(pod.Ports, policy.Port{Name: PortName(port, proto), Port: port, Protocol: proto})
			}
		}
		s.Pods = append(s.Pods, pod)
	}
	return s
}

// Peer matches pods by namespace and/or name; empty fields match all.
type Peer struct {
	Namespace string
	Pod       string
}

func (p *Peer) matches(s PodString) bool {
	ns, name := s.split()
	return (p.Namespace == "" || p.Namespace == ns) && (p.Pod == "" || p.Pod == name)
}

// Reachability is an expected truth table over the nine pods, built as
// upstream's reachability.go builds it.
type Reachability struct {
	Pods     []PodString
	Expected map[PodString]map[PodString]bool
}

// NewReachability starts a table with every pair set to def.
func NewReachability(def bool) *Reachability {
	r := &Reachability{Pods: AllPods(), Expected: map[PodString]map[PodString]bool{}}
	for _, f := range r.Pods {
		r.Expected[f] = map[PodString]bool{}
		for _, t := range r.Pods {
			r.Expected[f][t] = def
		}
	}
	return r
}

// Expect sets one pair.
func (r *Reachability) Expect(from, to PodString, ok bool) *Reachability {
	r.Expected[from][to] = ok
	return r
}

// ExpectAllIngress sets every pair into pod.
func (r *Reachability) ExpectAllIngress(pod PodString, ok bool) *Reachability {
	for _, f := range r.Pods {
		r.Expected[f][pod] = ok
	}
	return r
}

// ExpectAllEgress sets every pair out of pod.
func (r *Reachability) ExpectAllEgress(pod PodString, ok bool) *Reachability {
	for _, t := range r.Pods {
		r.Expected[pod][t] = ok
	}
	return r
}

// ExpectPeer sets every pair whose ends match from and to.
func (r *Reachability) ExpectPeer(from, to *Peer, ok bool) *Reachability {
	for _, f := range r.Pods {
		if from.matches(f) {
			for _, t := range r.Pods {
				if to.matches(t) {
					r.Expected[f][t] = ok
				}
			}
		}
	}
	return r
}

// Table prints the matrix as upstream does: rows are sources, columns
// destinations, "." connected, "X" refused, "-" loopback (not compared).
func (r *Reachability) Table(get func(from, to PodString) bool) string {
	var b strings.Builder
	b.WriteString("-")
	for _, t := range r.Pods {
		b.WriteString("\t" + strings.ReplaceAll(string(t), "/", ""))
	}
	b.WriteString("\n")
	for _, f := range r.Pods {
		b.WriteString(strings.ReplaceAll(string(f), "/", ""))
		for _, t := range r.Pods {
			c := "X"
			switch {
			case f == t:
				c = "-"
			case get(f, t):
				c = "."
			}
			b.WriteString("\t" + c)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Probe is one port/protocol with its expected matrix.
type Probe struct {
	Port         int32
	Protocol     corev1.Protocol
	Reachability *Reachability
}

func (p Probe) String() string {
	return fmt.Sprintf("%s/%d", strings.ToLower(string(p.Protocol)), p.Port)
}

// Case is one test: policies, label updates, and the four probes.
type Case struct {
	Name string
	// Upstream is the network_policy.go test this case reproduces ("" for
	// klab's own).
	Upstream        string
	Policies        policies
	NamespaceLabels map[string]map[string]string
	PodLabels       map[PodString]map[string]string
	Probes          []Probe
}

// sortedNames is for stable test output.
func sortedNames(cs []Case) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	sort.Strings(out)
	return out
}
