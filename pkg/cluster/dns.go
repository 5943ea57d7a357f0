package cluster

// Cluster DNS, run the way Kubernetes runs it: with DNS on (the first
// 'klab node add --dns', or 'dns: true' in a lab's front matter), the lab
// gets two DNS server pods, kube-system/coredns-<hash>-<id>, on different
// nodes once there are two, behind the Service kube-system/kube-dns at the
// 10th address of the service CIDR (10.96.0.10, as kubeadm allocates it),
// port 53 over UDP and TCP, programmed by klab's kube-proxy rules like any
// Service: a lookup is DNAT plus, across nodes, VXLAN. The servers are
// klab's own (pkg/dns, the Kubernetes DNS specification); each watches the
// lab's state and answers from it within a fraction of a second of any
// change. Names outside cluster.local are forwarded to the lab's
// "internet": the external host runs a small authoritative server for
// example.test. Every pod gets the resolv.conf the kubelet writes
// (nameserver 10.96.0.10, search <ns>.svc.cluster.local svc.cluster.local
// cluster.local, options ndots:5) as /etc/netns/<pod netns>/resolv.conf,
// which 'ip netns exec' and 'klab exec' put in place of /etc/resolv.conf.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/klab-dev/klab/pkg/dns"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// Cluster DNS names and defaults.
const (
	DNSNamespace = "kube-system"
	DNSService   = "kube-system/kube-dns"
	DNSZone      = "cluster.local"
	// DNSLabel selects the DNS pods, as in kubeadm's CoreDNS Deployment.
	DNSLabelKey, DNSLabelValue = "k8s-app", "kube-dns"
	// DNSReplicas is kubeadm's CoreDNS replica count.
	DNSReplicas = 2
	// ExternalZone is the zone the external host serves.
	ExternalZone = "example.test"
)

// dnsPodBase is the pods' name prefix: the Deployment's ReplicaSet name.
const dnsPodBase = "coredns-7db6d8ff4d-"

// ExternalZoneText is the external host's zone: its own name and a few
// others to look up.
var ExternalZoneText = strings.Join([]string{
	"$TTL 60",
	"@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60",
	"@ IN NS ns.example.test.",
	"@ IN A 203.0.113.10",
	"ns IN A 203.0.113.10",
	"www IN A 203.0.113.10",
	"external IN A 203.0.113.10",
	"",
}, "\n")

// DNSServiceIP is the kube-dns ClusterIP: the 10th address of the service
// CIDR.
func (l *Lab) DNSServiceIP() netip.Addr {
	a, _ := ipam.Nth(l.ServiceCIDR, 10)
	return a
}

// ResolvConf is the resolv.conf the kubelet writes for a pod of namespace
// ns with the ClusterFirst DNS policy.
func (l *Lab) ResolvConf(ns string) string {
	return fmt.Sprintf("nameserver %s\nsearch %s.svc.%s svc.%s %s\noptions ndots:5\n", l.DNSServiceIP(), ns, DNSZone, DNSZone, DNSZone)
}

// EtcNetns is where 'ip netns exec' finds a namespace's own /etc files.
const EtcNetns = "/etc/netns"

// resolvConfPath is a pod's resolv.conf under /etc/netns.
func (c *Cluster) resolvConfPath(pod string) string {
	return filepath.Join(EtcNetns, c.NS(pod), "resolv.conf")
}

// ResolvConfPath is the resolv.conf of a pod of the lab when DNS is on, or
// "".
func (c *Cluster) ResolvConfPath(pod string) string {
	if !c.Lab.DNS || c.Lab.Pod(pod) == nil {
		return ""
	}
	return c.resolvConfPath(pod)
}

// resolvConfOps writes a pod's resolv.conf (DNS on).
func (c *Cluster) resolvConfOps(p *Pod) plan.Plan {
	if !c.Lab.DNS {
		return nil
	}
	return plan.Plan{{Verb: plan.WriteFile, New: true, File: &plan.File{Path: c.resolvConfPath(p.Name), Data: []byte(c.Lab.ResolvConf(p.Namespace())), Atomic: true}}}
}

// DNSSnapshot is the lab's services, endpoints and pods as the DNS server
// reads them.
func (l *Lab) DNSSnapshot() *dns.Objects {
	o := &dns.Objects{EndpointsOf: map[string][]dns.Endpoint{}}
	for _, s := range l.Services {
		ds := dns.Service{Namespace: s.Namespace(), Name: s.ShortName(), ClusterIP: s.ClusterIP, ExternalName: s.ExternalName}
		switch s.Type {
		case ServiceHeadless:
			ds.Type = dns.Headless
		case ServiceExternalName:
			ds.Type = dns.ExternalName
		}
		for _, p := range s.Ports {
			proto := "TCP"
			if p.Protocol == nat.UDP {
				proto = "UDP"
			}
			ds.Ports = append(ds.Ports, dns.Port{Name: p.Name, Protocol: proto, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort)})
		}
		o.ServiceList = append(o.ServiceList, ds)
		key := s.Namespace() + "/" + s.ShortName()
		for _, p := range l.SelectedPods(s) {
			o.EndpointsOf[key] = append(o.EndpointsOf[key], dns.Endpoint{IP: p.IP, Ready: !p.Unready, PodName: p.ShortName(), NodeName: p.Node})
		}
	}
	for _, p := range l.Pods {
		o.PodList = append(o.PodList, dns.Pod{Namespace: p.Namespace(), Name: p.ShortName(), IP: p.IP, Hostname: p.Hostname, Subdomain: p.Subdomain})
	}
	return o
}

// ensureDNS makes the lab's cluster DNS match its nodes: the DNS pods
// (spread over the first two nodes), their servers, the kube-dns Service
// and the external host's server. It is called after nodes are added.
func (c *Cluster) ensureDNS() error {
	l := c.Lab
	if !l.DNS || len(l.Nodes) == 0 {
		return nil
	}
	if c.Serve == nil {
		return errors.New("cluster DNS needs klab's server binary: set Cluster.Serve")
	}
	if c.A.DryRun {
		return nil // the DNS pods are planned when the command runs for real
	}
	// Where the replicas should run: one per node while there are two.
	want := make([]string, DNSReplicas)
	for i := range want {
		want[i] = l.Nodes[i%len(l.Nodes)].Name
	}
	var have []*Pod
	for _, p := range l.Pods {
		if strings.HasPrefix(p.Name, DNSNamespace+"/"+dnsPodBase) {
			have = append(have, p)
		}
	}
	// A replica on the wrong node (both on node1 before node2 existed)
	// is replaced by one on the right node, as the scheduler would place
	// a new replica after a rollout.
	for i, p := range have {
		if i < len(want) && p.Node != want[i] {
			if err := c.DelPod(p.Name); err != nil {
				return err
			}
			have[i] = nil
		}
	}
	for i, node := range want {
		if i < len(have) && have[i] != nil {
			continue
		}
		name := fmt.Sprintf("%s/%s%s", DNSNamespace, dnsPodBase, dnsPodSuffix(l, node, i))
		if l.Pod(name) != nil {
			continue
		}
		p, err := c.AddPod(PodSpec{Name: name, Node: node, Labels: map[string]string{DNSLabelKey: DNSLabelValue}})
		if err != nil {
			return fmt.Errorf("DNS pod %s: %w", name, err)
		}
		p.Ports = []ContainerPort{{Name: "dns", Port: 53, Protocol: nat.UDP}, {Name: "dns-tcp", Port: 53, Protocol: nat.TCP}}
		if _, err := c.StartServer(p.Name, "dns", 53, c.Serve(p.Name, "dns", 53)); err != nil {
			return fmt.Errorf("DNS server in %s: %w", p.Name, err)
		}
	}
	if l.Service(DNSService) == nil {
		if _, err := c.AddService(ServiceSpec{Name: DNSService, ClusterIP: l.DNSServiceIP(), Selector: map[string]string{DNSLabelKey: DNSLabelValue},
			Ports: []nat.ServicePort{{Name: "dns", Protocol: nat.UDP, Port: 53}, {Name: "dns-tcp", Protocol: nat.TCP, Port: 53}}}); err != nil {
			return fmt.Errorf("service %s: %w", DNSService, err)
		}
	}
	for _, s := range l.Servers {
		if s.Target == ExternalName && s.Proto == "dns-authority" && alive(s.PID) {
			return c.Save()
		}
	}
	if _, err := c.StartServer(ExternalName, "dns-authority", 53, c.Serve(ExternalName, "dns-authority", 53)); err != nil {
		return fmt.Errorf("the external host's DNS server: %w", err)
	}
	return c.Save()
}

// dnsPodSuffix is a DNS replica's 5-character suffix, stable per lab,
// node and replica.
func dnsPodSuffix(l *Lab, node string, i int) string {
	m := MAC(l.Name, node, fmt.Sprintf("coredns-%d", i))
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	var b strings.Builder
	for _, x := range m[1:] {
		b.WriteByte(alphabet[int(x)%len(alphabet)])
	}
	return b.String()
}

// planEtcNetnsCleanup removes the /etc/netns entries of a lab's namespaces
// (resolv.conf files), for destroy.
func planEtcNetnsCleanup(lab string) plan.Plan {
	ents, _ := filepath.Glob(filepath.Join(EtcNetns, netns.Prefix+lab+".*"))
	var p plan.Plan
	for _, e := range ents {
		if l, _, ok := netns.Parse(filepath.Base(e)); ok && l == lab {
			p.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: e, Recurse: true}})
		}
	}
	return p
}

// ServeDNS is a DNS pod's server: klab's cluster DNS on port 53 (UDP and
// TCP) of the namespace the process runs in, answering from the lab's
// state, which it reads again whenever the state file changes (checked
// every 100 ms: a change is answered within a second), forwarding other
// names to the external host. It prints "listening" once the sockets are
// open (StartServer waits for that).
func ServeDNS(ctx context.Context, stateDir, lab string) error {
	// The file as it was before the first read: the watcher below reloads
	// only what changed after it (not the same 10,000 services again).
	path := StateFile(stateDir, lab)
	last, _ := os.Stat(path)
	l, err := Load(stateDir, lab)
	if err != nil {
		return err
	}
	var d net.Dialer
	srv, err := dns.New(dns.Config{Zone: DNSZone, Upstream: net.JoinHostPort(ExternalIP.String(), "53"), Dial: d.DialContext, Timeout: time.Second})
	if err != nil {
		return err
	}
	if err := srv.Update(l.DNSSnapshot()); err != nil {
		return err
	}
	udp, tcp, err := listen53()
	if err != nil {
		return err
	}
	fmt.Printf("listening on udp and tcp :53: the cluster DNS of lab %s (zone %s)\n", lab, DNSZone)
	go func() {
		for ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			fi, err := os.Stat(path)
			if err != nil || last != nil && fi.ModTime().Equal(last.ModTime()) && fi.Size() == last.Size() {
				continue
			}
			last = fi
			if l, err := Load(stateDir, lab); err == nil {
				if err := srv.Update(l.DNSSnapshot()); err != nil {
					fmt.Printf("%s: update: %v\n", time.Now().Format(time.RFC3339), err)
				}
			}
		}
	}()
	return srv.Serve(ctx, udp, tcp)
}

// ServeExternalDNS is the external host's server: authoritative for
// example.test, the lab's stand-in for the internet's DNS.
func ServeExternalDNS(ctx context.Context) error {
	a, err := dns.NewAuthority(ExternalZone, ExternalZoneText)
	if err != nil {
		return err
	}
	udp, tcp, err := listen53()
	if err != nil {
		return err
	}
	fmt.Printf("listening on udp and tcp :53: authoritative for %s\n", ExternalZone)
	return a.Serve(ctx, udp, tcp)
}

// listen53 opens UDP and TCP port 53 in the namespace the process runs in.
func listen53() (net.PacketConn, net.Listener, error) {
	udp, err := net.ListenPacket("udp4", ":53")
	if err != nil {
		return nil, nil, err
	}
	tcp, err := net.Listen("tcp4", ":53")
	if err != nil {
		udp.Close()
		return nil, nil, err
	}
	return udp, tcp, nil
}

// ServiceEnv is the environment the kubelet gives a pod's containers for
// the Services of its namespace (kubernetes/kubernetes
// pkg/kubelet/envvars/envvars.go, FromServices): for each Service with a
// ClusterIP, <NAME>_SERVICE_HOST and _SERVICE_PORT (and _SERVICE_PORT_<PORT
// NAME> for named ports), and the Docker-links-style <NAME>_PORT,
// <NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]. NAME is the service name
// upper-cased with '-' as '_'. The kubelet takes the services that exist
// when the pod starts; klab, when the command starts.
func (l *Lab) ServiceEnv(p *Pod) []string {
	var out []string
	for _, s := range l.Services {
		if s.Namespace() != p.Namespace() || !s.proxied() || !s.ClusterIP.IsValid() || len(s.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.ShortName(), "-", "_"))
		host := s.ClusterIP.String()
		out = append(out, name+"_SERVICE_HOST="+host, fmt.Sprintf("%s_SERVICE_PORT=%d", name, s.Ports[0].Port))
		for _, sp := range s.Ports {
			if sp.Name != "" {
				out = append(out, fmt.Sprintf("%s_SERVICE_PORT_%s=%d", name, strings.ToUpper(strings.ReplaceAll(sp.Name, "-", "_")), sp.Port))
			}
		}
		proto := func(sp nat.ServicePort) string {
			if sp.Protocol == nat.UDP {
				return "udp"
			}
			return "tcp"
		}
		first := s.Ports[0]
		out = append(out, fmt.Sprintf("%s_PORT=%s://%s:%d", name, proto(first), host, first.Port))
		for _, sp := range s.Ports {
			pre := fmt.Sprintf("%s_PORT_%d_%s", name, sp.Port, strings.ToUpper(proto(sp)))
			out = append(out, fmt.Sprintf("%s=%s://%s:%d", pre, proto(sp), host, sp.Port),
				pre+"_PROTO="+proto(sp), fmt.Sprintf("%s_PORT=%d", pre, sp.Port), pre+"_ADDR="+host)
		}
	}
	return out
}

// LookupHost resolves name from the namespace ns of a pod of namespace
// podNS the way the pod's resolver does with the kubelet's resolv.conf: a
// name with fewer than five dots is tried with each search domain first,
// then as it is; the queries go to the kube-dns ClusterIP over UDP from
// inside ns (so through kube-proxy's DNAT), and the first A record wins.
// ok is false when no name of the sequence has an address.
func (l *Lab) LookupHost(ctx context.Context, ns, podNS, name string) (addr netip.Addr, ok bool, err error) {
	names := []string{}
	if strings.Count(name, ".") < 5 && !strings.HasSuffix(name, ".") {
		for _, d := range []string{podNS + ".svc." + DNSZone, "svc." + DNSZone, DNSZone} {
			names = append(names, name+"."+d+".")
		}
	}
	names = append(names, strings.TrimSuffix(name, ".")+".")
	server := net.JoinHostPort(l.DNSServiceIP().String(), "53")
	for _, n := range names {
		q := new(miekg.Msg)
		q.SetQuestion(n, miekg.TypeA)
		var r *miekg.Msg
		err = netns.Do(ns, func() error {
			c := &miekg.Client{Net: "udp", Timeout: time.Second}
			var e error
			r, _, e = c.ExchangeContext(ctx, q, server)
			return e
		})
		if err != nil {
			return netip.Addr{}, false, fmt.Errorf("look up %s at %s: %w", n, server, err)
		}
		for _, rr := range r.Answer {
			if a, isA := rr.(*miekg.A); isA {
				ip, _ := netip.AddrFromSlice(a.A.To4())
				return ip, true, nil
			}
		}
	}
	return netip.Addr{}, false, nil
}
