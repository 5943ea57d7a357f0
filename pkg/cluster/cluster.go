package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/plan"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Options are the lab-wide settings, used when a lab is created.
type Options struct {
	Backend      string
	ClusterCIDR  netip.Prefix
	ServiceCIDR  netip.Prefix
	UnderlayCIDR netip.Prefix
	UnderlayMTU  int
	VNI          int
	Port         int
	DNS          bool // cluster DNS (see dns.go)
	// Calico holds the calico backend's settings (calico.go).
	Calico CalicoSettings
	// ControlPlane "etcd", FlannelMode and LeaseTTL: see controlplane.go.
	ControlPlane string
	FlannelMode  string
	LeaseTTL     time.Duration
	// Etcd with Endpoints set is an external etcd cluster
	// (--etcd-endpoints, implies ControlPlane "etcd"); its Prefix and TLS
	// files are flanneld's --etcd-* flags (controlplane_external.go).
	Etcd agent.EtcdConfig
	// ProxyMode is kube-proxy's mode: "" (iptables), iptables or nftables (proxymode.go).
	ProxyMode string
}

// withDefaults fills the zero fields with seed 003's values.
func (o Options) withDefaults() Options {
	if o.Backend == "" {
		o.Backend = BackendVXLAN
	}
	if !o.ClusterCIDR.IsValid() {
		o.ClusterCIDR = DefaultClusterCIDR
	}
	if !o.ServiceCIDR.IsValid() {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	if !o.UnderlayCIDR.IsValid() {
		o.UnderlayCIDR = DefaultUnderlayCIDR
	}
	if o.UnderlayMTU == 0 {
		o.UnderlayMTU = 1500
	}
	if o.VNI == 0 {
		o.VNI = 1
	}
	if o.Port == 0 {
		o.Port = 8472
	}
	return o
}

// Validate checks lab-wide settings.
func (o Options) Validate() error {
	o = o.withDefaults()
	if err := ValidateProxyMode(o.ProxyMode); err != nil {
		return err
	}
	if o.Backend != BackendVXLAN && o.Backend != BackendHostGW && o.Backend != BackendCalico {
		return fmt.Errorf("backend %q is not known: use vxlan, host-gw or calico", o.Backend)
	}
	if err := o.validateCalico(); err != nil {
		return err
	}
	for _, c := range []struct {
		what string
		p    netip.Prefix
	}{{"cluster CIDR", o.ClusterCIDR}, {"service CIDR", o.ServiceCIDR}, {"underlay CIDR", o.UnderlayCIDR}} {
		if !c.p.Addr().Is4() || c.p.Masked() != c.p {
			return fmt.Errorf("%s %s must be an IPv4 network address, like 10.244.0.0/16", c.what, c.p)
		}
	}
	// Nodes lease /24s and, as flannel does, the first one (holding the
	// network address) is skipped: a /24 would leave no lease at all.
	if o.Backend != BackendCalico && o.ClusterCIDR.Bits() > 23 {
		return fmt.Errorf("cluster CIDR %s is too small: each node leases a /24 of it and the first /24 is never leased (as in flannel), so use /23 or larger (10.244.0.0/16)", o.ClusterCIDR)
	}
	if o.UnderlayCIDR.Bits() > 29 {
		return fmt.Errorf("underlay CIDR %s is too small: use /29 or larger (192.168.1.0/24)", o.UnderlayCIDR)
	}
	pairs := [][2]string{{"cluster CIDR", "service CIDR"}, {"cluster CIDR", "underlay CIDR"}, {"service CIDR", "underlay CIDR"},
		{"cluster CIDR", "external host's network"}, {"service CIDR", "external host's network"}, {"underlay CIDR", "external host's network"}}
	ps := map[string]netip.Prefix{"cluster CIDR": o.ClusterCIDR, "service CIDR": o.ServiceCIDR, "underlay CIDR": o.UnderlayCIDR, "external host's network": ExternalCIDR}
	for _, pr := range pairs {
		if ps[pr[0]].Overlaps(ps[pr[1]]) {
			return fmt.Errorf("%s %s overlaps %s %s: choose ranges that do not overlap", pr[0], ps[pr[0]], pr[1], ps[pr[1]])
		}
	}
	if o.UnderlayMTU < 1280 || o.UnderlayMTU > 9000 {
		return fmt.Errorf("underlay MTU %d is out of range: use 1280-9000", o.UnderlayMTU)
	}
	if o.VNI < 1 || o.VNI > 1<<24-1 {
		return fmt.Errorf("VNI %d is out of range: use 1-16777215", o.VNI)
	}
	if err := o.validateControlPlane(); err != nil {
		return err
	}
	if o.Port < 1 || o.Port > 65535 {
		return fmt.Errorf("VXLAN port %d is out of range: use 1-65535 (8472 is flannel's default)", o.Port)
	}
	return nil
}

// Cluster is an open lab: its state, locked for this process, plus the
// netlink handles opened in its namespaces.
type Cluster struct {
	StateDir string
	Lab      *Lab
	// A is the applier every change of this lab goes through. Open makes
	// it Discard what ran; clear that to have Ran list the operations that
	// ran (--explain, --script). With DryRun set, nothing runs and Ran is
	// the plan (--dry-run).
	A *plan.Applier
	// Ctx, when not nil, interrupts a build (Ctrl-C): the applier stops
	// between two operations, the call rolls back what it created and
	// returns an error wrapping ErrInterrupted (see interrupt.go).
	Ctx context.Context

	// Serve returns the command line of klab's server worker for a
	// target (echo servers, the DNS servers, the readiness prober); the
	// CLI sets it to its own binary.
	Serve ServerArgv

	// Progress, when not nil, is told how far a bulk build (Build, and
	// so apply) has got: done of total nodes (see progress.go).
	Progress func(done, total int)

	lock   *os.File
	states map[string]*plan.State // read since the last apply (see read)
	// deferBird holds BIRD (re)configuration until a bulk build is done
	// (calico.go).
	deferBird bool

	agentProxy *proxyView // a node agent's view: it renders the services from etcd (controlplane_proxy.go)
	proxyLag   error      // the agents the last publish waited for in vain (controlplane_proxy.go)
	// agentVia is where a node agent's etcd sockets open (its node's
	// namespace, or the machine's for an external etcd: RunAgent).
	agentVia agent.Via
	// claimCache is the service claims etcd held when this verb first
	// read them, in a lab that spans machines (serviceclaims.go).
	claimCache *serviceClaims
	policyLag  error // the same for the policies (controlplane_policy.go)
	// proxyApplied is, in a node's agent, the proxy mode its kube-proxy
	// role last synced the node in (the policy role waits for it after a
	// switch: controlplane_policy.go).
	proxyApplied *appliedMode
}

// Dir is the lab's state directory.
func (c *Cluster) Dir() string { return filepath.Join(c.StateDir, c.Lab.Name) }

// NS returns the namespace name of an object of this lab.
func (c *Cluster) NS(obj string) string { return netns.Name(c.Lab.Name, obj) }

// Lock takes the per-lab lock (flock on <stateDir>/<lab>.lock), telling
// wait (if not nil) when it has to wait for another klab command. The lock
// is released when the file is closed or the process dies, however it dies.
//
// A lock file is only ever removed by a process that holds it (destroy,
// CleanupHostDirs); a process that was waiting on the removed file notices
// that the path now names another file (or none) and locks again, so two
// commands never hold "the" lock of one lab at the same time.
func Lock(stateDir, lab string, wait io.Writer) (*os.File, error) {
	told := false
	for attempt := 0; ; attempt++ {
		f, err := openLock(stateDir, lab)
		if err != nil {
			// The state directory can vanish between MkdirAll and Open
			// when another command removes it as empty: try again.
			if errors.Is(err, os.ErrNotExist) && attempt < 100 {
				continue
			}
			return nil, fmt.Errorf("lock lab %q: %w", lab, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			if wait != nil && !told {
				fmt.Fprintf(wait, "klab: waiting for another klab command on lab %q to finish...\n", lab)
				told = true
			}
			for {
				err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
				if err != unix.EINTR {
					break
				}
			}
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("lock lab %q: %w", lab, err)
			}
		}
		if sameFile(f, filepath.Join(stateDir, lab+".lock")) {
			return f, nil
		}
		f.Close() // removed or replaced while we waited: lock the new one
	}
}

func openLock(stateDir, lab string) (*os.File, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(stateDir, lab+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
}

// sameFile reports whether the open file f is still the file at path.
func sameFile(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// tryLockPath takes the lock file at path without waiting; ok is false if
// someone else holds it (or it is gone).
func tryLockPath(path string) (f *os.File, ok bool) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, false
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil || !sameFile(f, path) {
		f.Close()
		return nil, false
	}
	return f, true
}

// Open locks and loads a lab. If the lab does not exist and create is not
// nil, a new lab is created with those options (nothing touches the kernel
// until a node is added).
func Open(stateDir, lab string, create *Options, wait io.Writer) (*Cluster, error) {
	if err := netns.ValidateLab(lab); err != nil {
		return nil, err
	}
	lock, err := Lock(stateDir, lab, wait)
	if err != nil {
		return nil, err
	}
	l, err := Load(stateDir, lab)
	if errors.Is(err, ErrNoLab) && create != nil {
		if err := create.Validate(); err != nil {
			unlock(stateDir, lab, lock)
			return nil, err
		}
		o := create.withDefaults()
		l = &Lab{
			Name: lab, Backend: o.Backend, ClusterCIDR: o.ClusterCIDR, ServiceCIDR: o.ServiceCIDR,
			UnderlayCIDR: o.UnderlayCIDR, UnderlayGateway: o.UnderlayCIDR.Addr().Next(), UnderlayMTU: o.UnderlayMTU,
			VNI: o.VNI, Port: o.Port, DNS: o.DNS, ProxyMode: o.ProxyMode, Created: time.Now().UTC(),
		}
		l.ControlPlane = o.newControlPlane(l.UnderlayCIDR)
		l.Calico = o.calicoSettings()
		err = nil
	}
	if err != nil {
		unlock(stateDir, lab, lock)
		if errors.Is(err, ErrNoLab) {
			return nil, fmt.Errorf("lab %q does not exist: add a node first (klab node add node1 --lab %s) or run a lab (klab labs)", lab, lab)
		}
		return nil, err
	}
	return &Cluster{StateDir: stateDir, Lab: l, lock: lock, A: &plan.Applier{Discard: true}}, nil
}

// Close releases the netlink handles and the lab lock.
func (c *Cluster) Close() {
	c.A.Close()
	if c.lock != nil {
		unlock(c.StateDir, c.Lab.Name, c.lock)
		c.lock = nil
	}
}

// unlock releases a lab's lock. When the lab has no state (a command on a
// lab that does not exist, or a first node add that failed and rolled
// back), the lock file and an empty state directory go too, so that bad
// input leaves nothing behind; the holder may remove it (see Lock).
func unlock(stateDir, lab string, lock *os.File) {
	if _, err := os.Stat(StateFile(stateDir, lab)); errors.Is(err, os.ErrNotExist) {
		os.Remove(filepath.Join(stateDir, lab))
		os.Remove(filepath.Join(stateDir, lab+".lock"))
		lock.Close()
		CleanupHostDirs(stateDir)
		return
	}
	lock.Close()
}

// Save persists the lab's state, through the applier (an operation like
// any other: skipped in a dry run, a crash point).
func (c *Cluster) Save() error { return c.apply(c.savePlan()) }

// Handle returns a (cached) netlink handle inside an object's namespace,
// for reading.
func (c *Cluster) Handle(obj string) (*netlink.Handle, error) { return c.A.Handle(c.NS(obj)) }

// read returns the kernel state of an object's namespace (see
// plan.State), read once per namespace until the next apply: the planners
// of one change share it, so what one plans (a device replaced) the next
// one sees.
func (c *Cluster) read(obj string, sysctls ...string) (*plan.State, error) {
	ns := c.NS(obj)
	if st, ok := c.states[ns]; ok && hasKeys(st, sysctls) {
		return st, nil
	}
	st, err := c.A.Read(ns, sysctls...)
	if err != nil {
		return nil, err
	}
	if c.states == nil {
		c.states = map[string]*plan.State{}
	}
	c.states[ns] = st
	return st, nil
}

func hasKeys(st *plan.State, keys []string) bool {
	for _, k := range keys {
		if _, ok := st.Sysctls[k]; !ok && st.Exists {
			return false
		}
	}
	return true
}

// apply runs a plan through the lab's applier, interruptible by c.Ctx.
func (c *Cluster) apply(p plan.Plan) error {
	c.states = nil
	c.A.Ctx = c.Ctx
	err := c.A.Apply(p)
	if errors.Is(err, plan.ErrInterrupted) {
		return fmt.Errorf("lab %s: %w", c.Lab.Name, err)
	}
	return err
}

// CheckOptions rejects lab-wide settings given for a lab that already
// exists with different ones (they only apply when a lab is created).
// changed tells which flags the user set, by flag name.
func (c *Cluster) CheckOptions(o Options, changed func(flag string) bool) error {
	l := c.Lab
	for _, f := range []struct {
		flag      string
		want, has string
	}{
		{"backend", o.Backend, l.Backend},
		{"cluster-cidr", o.ClusterCIDR.String(), l.ClusterCIDR.String()},
		{"underlay-cidr", o.UnderlayCIDR.String(), l.UnderlayCIDR.String()},
		{"underlay-mtu", fmt.Sprint(o.UnderlayMTU), fmt.Sprint(l.UnderlayMTU)},
		{"service-cidr", o.ServiceCIDR.String(), l.ServiceCIDR.String()},
		{"dns", fmt.Sprint(o.DNS), fmt.Sprint(l.DNS)},
		{"control-plane", o.ControlPlane, l.controlPlaneKind()},
		{"etcd-endpoints", strings.Join(o.Etcd.Endpoints, ","), l.externalEndpoints()},
		{"etcd-prefix", o.Etcd.Prefix, l.etcdPrefix()},
		{"flannel-mode", o.FlannelMode, l.flannelMode()},
		{"proxy-mode", (&Lab{ProxyMode: o.ProxyMode}).Mode(), l.Mode()},
	} {
		if changed(f.flag) && f.want != f.has {
			return fmt.Errorf("lab %s already uses %s %s, and --%s only applies when a lab is created: destroy the lab first (klab destroy %s) or pick another --lab", l.Name, f.flag, f.has, f.flag, l.Name)
		}
	}
	return nil
}
