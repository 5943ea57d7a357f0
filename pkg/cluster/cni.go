package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/cni"
	"github.com/klab-dev/klab/pkg/ipam"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
)

// Pods wired by the real CNI plugins (klab pod add --cni): instead of
// klab's own veth plan, the node runs the chain kubelet and containerd run
// on a flannel node — bridge (with host-local) then portmap — through
// libcni (pkg/cni). The chain's files live in the lab's state, never in
// the host's /etc/cni/net.d or /var/lib/cni:
//
//	<lab>/cni/<node>/net.d/10-flannel.conflist   kube-flannel's file, as on a node
//	<lab>/cni/<node>/cbr0.conflist                the chain that runs: flannel's delegate config
//	<lab>/cni/<node>/conf/<plugin>.json           each plugin's stdin, for running it by hand
//	<lab>/cni/<node>/networks/cbr0                host-local's files (dataDir .../networks);
//	<lab>/ipam/<node> -> <lab>/cni/<node>/networks/cbr0   klab's allocator: the same files
//	<lab>/cni/cache                               libcni's results (kubelet: /var/lib/cni)
//	<lab>/cni/results/<pod>.json                  each pod's ADD result
//
// host-local's directory is klab's own allocator directory (same layout,
// one file per address): CNI-wired and natively wired pods on one node
// never get the same address.

// CNIPaths are the directories searched for CNI plugins (cni.Paths).
func CNIPaths() []string { return cni.Paths() }

func (c *Cluster) cniDir(node string) string { return filepath.Join(c.Dir(), "cni", node) }

// CNIConflist is the path of the chain a node's CNI-wired pods run.
func (c *Cluster) CNIConflist(node string) string {
	return filepath.Join(c.cniDir(node), cni.NetworkName+".conflist")
}

// CNIResultPath is the path of a CNI-wired pod's ADD result.
func (c *Cluster) CNIResultPath(pod string) string {
	return filepath.Join(c.Dir(), "cni", "results", netns.Object(pod)+".json")
}

func (c *Cluster) cniRunner() cni.Runner {
	return cni.Runner{Paths: CNIPaths(), CacheDir: filepath.Join(c.Dir(), "cni", "cache")}
}

func (c *Cluster) cniAttachment(p *Pod) cni.Attachment {
	return cni.Attachment{HostNS: c.NS(p.Node), NetNS: c.NS(p.Name), ContainerID: p.Name, IfName: PodIface,
		// kubelet's CNI_ARGS (IgnoreUnknown: plugins that do not know
		// the Kubernetes keys must not fail on them).
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace()}, {"K8S_POD_NAME", p.ShortName()},
			{"K8S_POD_INFRA_CONTAINER_ID", p.Name}}}
}

// cniConflist renders a node's chain from its subnet.env, as the flannel
// plugin reads it on every call.
func (c *Cluster) cniConflist(node string) ([]byte, error) {
	b, err := os.ReadFile(c.SubnetEnvPath(node))
	if err != nil {
		return nil, fmt.Errorf("node %s has no subnet.env (%v): is the node built? see 'klab list'", node, err)
	}
	env, err := cni.ParseSubnetEnv(b)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	return cni.DelegateList(env, filepath.Join(c.cniDir(node), "networks"))
}

// cniNodeOps writes a node's CNI files where they differ from what is on
// disk, and links host-local's directory to the node's allocator.
func (c *Cluster) cniNodeOps(node string, list []byte) (plan.Plan, error) {
	confs, err := cni.PluginConfs(list)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		filepath.Join(c.cniDir(node), "net.d", "10-flannel.conflist"): cni.FlannelConflist(),
		c.CNIConflist(node): append(slices.Clone(list), '\n'),
	}
	for t, b := range confs {
		files[filepath.Join(c.cniDir(node), "conf", t+".json")] = b
	}
	lo, err := cni.PluginConfs(cni.LoopbackConf())
	if err != nil {
		return nil, err
	}
	files[filepath.Join(c.Dir(), "cni", "loopback.json")] = lo["loopback"]
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var pl plan.Plan
	for _, p := range paths {
		if old, err := os.ReadFile(p); err != nil || !bytes.Equal(old, files[p]) {
			pl.Add(plan.Op{Verb: plan.WriteFile, File: &plan.File{Path: p, Data: files[p], Mode: 0o644}})
		}
	}
	// host-local walks <dataDir>/cbr0 with filepath.Walk, which does not
	// follow a symlink at its root: the directory itself lives there and
	// klab's allocator directory becomes the link to it (klab reads it
	// with os.ReadDir, which follows links). Native pods' files move along.
	dir := filepath.Join(c.cniDir(node), "networks", cni.NetworkName)
	link := c.ipamStore(c.Lab.Node(node)).Dir
	if cur, err := os.Readlink(link); err != nil || cur != dir {
		pl.Add(plan.Op{Verb: plan.Exec, Why: "host-local's directory is the node's allocator directory",
			Proc: &plan.Proc{Cmd: fmt.Sprintf("mkdir -p %s %s && { if [ -d %s ] && [ ! -L %s ]; then mv %s %s; else mkdir -p %s; fi; ln -sfn %s %s; }",
				filepath.Dir(dir), filepath.Dir(link), link, link, link, dir, dir, dir, link), Run: func() error {
				return shareIPAMDir(dir, link)
			}}})
	}
	return pl, nil
}

// AddPodCNI adds a pod wired by the real CNI plugins: its namespace, then
// the node's chain run with ADD (CNI_COMMAND=ADD, CNI_NETNS = the pod's
// namespace, CNI_IFNAME=eth0), its result recorded in the lab's state; then
// the services it joins, as AddPod. A failed ADD is undone with DEL.
func (c *Cluster) AddPodCNI(s PodSpec) (*Pod, error) {
	n, err := c.podNode(&s)
	if err != nil {
		return nil, err
	}
	if c.Lab.Backend == BackendCalico {
		return nil, fmt.Errorf("pod %s: --cni runs flannel's CNI chain (bridge + host-local on cni0), which a calico lab has no bridge or subnet.env for: drop --cni (klab wires pods as Calico's CNI plugin does), or use --backend vxlan or host-gw", s.Name)
	}
	if strings.Contains(s.Name, "/") {
		return nil, fmt.Errorf("pod %s: --cni wires pods of the default namespace only (the CNI container id is the pod's name): drop the namespace or --cni", s.Name)
	}
	if s.IP.IsValid() {
		return nil, fmt.Errorf("pod %s: with --cni host-local chooses the address: leave --ip out", s.Name)
	}
	if missing := cni.Missing(CNIPaths(), cni.Plugins...); len(missing) > 0 && !c.A.DryRun {
		return nil, fmt.Errorf("CNI plugins %s are not in %s: install them with 'apt-get install containernetworking-plugins' (or set KLAB_CNI_PATH)", strings.Join(missing, ", "), strings.Join(CNIPaths(), ":"))
	}
	list, err := c.cniConflist(n.Name)
	if err != nil {
		return nil, err
	}
	// Stale allocator entries (an interrupted pod add) are released first,
	// as AddPod does, so host-local sees only live pods' addresses.
	stale, _, err := c.releaseStale(c.ipamStore(n))
	if err != nil {
		return nil, err
	}
	if err := c.interrupted(); err != nil {
		return nil, err
	}
	p := &Pod{Name: s.Name, Node: n.Name, Labels: s.Labels, CNI: true}
	var pl plan.Plan
	pl.Add(stale...)
	if !netns.Exists(c.NS(p.Name)) {
		pl.Add(plan.Op{Verb: plan.NetnsAdd, NS: c.NS(p.Name), New: true})
	}
	nodeOps, err := c.cniNodeOps(n.Name, list)
	if err != nil {
		return nil, err
	}
	pl.Add(nodeOps...)
	a := c.cniAttachment(p)
	run := c.cniRunner()
	var res *cni.Result
	result := &plan.File{Path: c.CNIResultPath(p.Name), Mode: 0o644}
	pl.Add(plan.Op{Verb: plan.Exec, NS: "", Why: "CNI ADD through libcni: loopback (as containerd), then bridge (host-local) and portmap; result in " + result.Path,
		Proc: &plan.Proc{Cmd: c.loopbackCommand("ADD", a, run.Paths) + "\n" + cni.ShellCommand("ADD", filepath.Join(c.cniDir(n.Name), "conf"), list, a, run.Paths), Run: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// containerd's order: the loopback network, then the pod's.
			if _, err := run.Add(ctx, cni.LoopbackConf(), a); err != nil {
				return err
			}
			r, err := run.Add(ctx, list, a)
			if err == nil && (!r.Addr.IsValid() || r.HostVeth == "") {
				err = fmt.Errorf("the CNI result names no IPv4 address or host interface: %s", r.JSON)
			}
			if err != nil {
				// The spec: a runtime calls DEL after a failed ADD.
				run.Del(ctx, list, a)
				run.Del(ctx, cni.LoopbackConf(), a)
				return err
			}
			res = r
			result.Data = append(r.JSON, '\n')
			return nil
		}}})
	if !c.A.DryRun {
		pl.Add(plan.Op{Verb: plan.WriteFile, File: result, Why: "the ADD result, as the runtime receives it"})
	}
	mark := c.A.Mark()
	if err := c.apply(pl); err != nil {
		c.A.RollbackTo(mark)
		return nil, err
	}
	if c.A.DryRun {
		// Nothing ran: the address is the one host-local would choose
		// (klab's allocator follows its rules on the same files), so the
		// planned state — 'klab run --dry-run' carries it to later steps —
		// holds the pod.
		req := []ipam.Request{{ID: p.Name, IfName: PodIface}}
		ips, err := c.ipamStore(n).Plan(req)
		if err != nil {
			return nil, err
		}
		p.IP = ips[0]
		if err := c.apply(c.ipamStore(n).RecordOps(req, ips)); err != nil {
			return nil, err
		}
		before := *c.Lab
		c.Lab.Pods = append(c.Lab.Pods, p)
		return p, c.commit(&before)
	}
	if !n.PodCIDR.Contains(res.Addr.Addr()) {
		c.cniDel(p, list)
		c.A.RollbackTo(mark)
		return nil, fmt.Errorf("CNI ADD gave pod %s address %s, outside node %s's subnet %s", p.Name, res.Addr, n.Name, n.PodCIDR)
	}
	p.IP, p.HostVeth = res.Addr.Addr(), res.HostVeth
	if rc := c.resolvConfOps(p); len(rc) > 0 {
		if err := c.apply(rc); err != nil {
			c.cniDel(p, list)
			c.A.RollbackTo(mark)
			return nil, err
		}
	}
	before := *c.Lab
	c.Lab.Pods = append(c.Lab.Pods, p)
	if err := c.commit(&before); err != nil {
		c.cniDel(p, list)
		c.A.RollbackTo(mark)
		return nil, err
	}
	return p, policyCheck("pod "+p.Name+" is up", c.syncPolicies())
}

func (c *Cluster) cniDel(p *Pod, list []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.cniRunner().Del(ctx, list, c.cniAttachment(p))
}

// cniDelOps runs a CNI-wired pod's chain with DEL (bridge removes the
// veth, host-local frees the address, portmap its rules), before its
// namespace goes.
func (c *Cluster) cniDelOps(p *Pod) plan.Plan {
	if !p.CNI {
		return nil
	}
	list, err := os.ReadFile(c.CNIConflist(p.Node))
	if err != nil {
		if list, err = c.cniConflist(p.Node); err != nil {
			return nil // the node is gone: nothing of the pod is left on it
		}
	}
	a := c.cniAttachment(p)
	run := c.cniRunner()
	var pl plan.Plan
	pl.Add(plan.Op{Verb: plan.Exec, Why: "CNI DEL through libcni: portmap, then bridge (host-local)",
		Proc: &plan.Proc{Cmd: cni.ShellCommand("DEL", filepath.Join(c.cniDir(p.Node), "conf"), list, a, run.Paths) + "\n" + c.loopbackCommand("DEL", a, run.Paths), Run: func() error {
			if !netns.Exists(c.NS(p.Node)) {
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := run.Del(ctx, list, a); err != nil {
				return err
			}
			return run.Del(ctx, cni.LoopbackConf(), a)
		}}})
	if exists(c.CNIResultPath(p.Name)) {
		pl.Add(plan.Op{Verb: plan.RemoveFile, File: &plan.File{Path: c.CNIResultPath(p.Name)}})
	}
	return pl
}

// planCNIDestroy runs DEL for every CNI-wired pod of a lab whose node is
// still there, so a destroy tears the pods down the way a runtime does
// (and the plugins' own cleanup runs) before the namespaces are deleted.
func planCNIDestroy(stateDir, lab string) plan.Plan {
	l, err := Load(stateDir, lab)
	if err != nil {
		return nil
	}
	c := &Cluster{StateDir: stateDir, Lab: l}
	var pl plan.Plan
	for _, p := range l.Pods {
		if p.CNI && netns.Exists(c.NS(p.Name)) {
			pl.Add(c.cniDelOps(p)...)
		}
	}
	return pl
}

// CNICheck runs CHECK for every CNI-wired pod: each plugin verifies what
// it set up (the bridge plugin: the veth, its master, the addresses and
// routes in the pod). It returns one problem per failing pod.
func CNICheck(stateDir string, l *Lab) []string {
	c := &Cluster{StateDir: stateDir, Lab: l}
	var out []string
	for _, p := range l.Pods {
		if !p.CNI || !netns.Exists(c.NS(p.Name)) || !netns.Exists(c.NS(p.Node)) {
			continue
		}
		list, err := os.ReadFile(c.CNIConflist(p.Node))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = c.cniRunner().Check(ctx, list, c.cniAttachment(p))
			cancel()
		}
		if err != nil {
			out = append(out, fmt.Sprintf("pod %s (CNI-wired) fails CNI CHECK: %v: recreate it with 'klab pod del %s --lab %s' and 'klab pod add %s --node %s --cni'", p.Name, err, p.Name, l.Name, p.Name, p.Node))
		}
	}
	return out
}

// shareIPAMDir makes dir the allocator directory, with link (klab's
// allocator path) pointing at it; files already at link move into dir.
func shareIPAMDir(dir, link string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if st, err := os.Lstat(link); err == nil && st.IsDir() {
		if _, err := os.Stat(dir); err == nil {
			return fmt.Errorf("both %s and %s exist: remove the lab ('klab destroy') and build it again", link, dir)
		}
		if err := os.Rename(link, dir); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	os.Remove(link)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	return os.Symlink(dir, link)
}

// loopbackCommand is the loopback plugin's call by hand.
func (c *Cluster) loopbackCommand(command string, a cni.Attachment, paths []string) string {
	return cni.ShellCommand(command, filepath.Join(c.Dir(), "cni"), cni.LoopbackConf(), a, paths)
}

// CNINodeConflist prepares a node for CNI calls (its files, host-local's
// directory shared with klab's allocator) and returns the chain: what a
// test runs its own plugins against (klabtest's Sandbox).
func (c *Cluster) CNINodeConflist(node string) ([]byte, error) {
	if c.Lab.Node(node) == nil {
		return nil, fmt.Errorf("node %q does not exist in lab %s", node, c.Lab.Name)
	}
	list, err := c.cniConflist(node)
	if err != nil {
		return nil, err
	}
	ops, err := c.cniNodeOps(node, list)
	if err != nil {
		return nil, err
	}
	return list, c.apply(ops)
}
