package cluster

// An external etcd (klab node add ... --etcd-endpoints URL,...): the
// control plane's etcd is a cluster outside the lab, as flanneld's
// --etcd-endpoints points at one. The lab then has no control-plane node
// and runs no etcd; its state records the endpoints, flanneld's TLS files
// (--etcd-cafile, --etcd-certfile, --etcd-keyfile) and --etcd-prefix.
//
// Reaching it: the etcd is on the machine's network, not the lab's
// underlay. The CLI dials from its own namespace (the machine's). The
// agents live in their nodes' namespaces, so the CLI opens its thread's
// /proc/thread-self/ns/net before forking an agent supervisor into a node
// and hands it down as file descriptor 3 (agent.MachineNetnsFD, exec.Cmd's
// ExtraFiles); the supervisor hands it to every agent it (re)starts, and
// the agent opens its etcd sockets on a thread switched into it for the
// connect only (agent.ViaFile). Nothing but those sockets exists in the
// machine's namespace.
//
// Sharing: one lab per etcd. flannel's keys live under the prefix, but
// the API server's objects (/registry/...) and klab's own keys (/klab/...)
// have no prefix to tell two labs apart, so a lab claims the etcd with the
// key /klab/lab, created in a transaction only if absent; another lab
// finds it and is refused in one sentence, and so is an etcd that already
// holds Kubernetes objects under /registry/. Destroy removes what the lab
// wrote: its nodes' leases (revoking their grants), /registry/ and /klab/
// (the lab owns both), and flannel's config only if this lab wrote it and
// it is unchanged; a lease written by someone else stays.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/agent"
	"github.com/klab-dev/klab/pkg/plan"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// OwnerKey is the key by which a lab claims an external etcd.
const OwnerKey = "/klab/lab"

// ownerKeys are the prefixes a lab owns in its external etcd, removed by
// destroy.
var ownerKeys = []string{"/registry/", "/klab/"}

// owner is OwnerKey's value.
type owner struct {
	Lab         string `json:"lab"`
	ID          string `json:"id"`     // ControlPlane.Owner: which lab of that name
	Prefix      string `json:"prefix"` // flannel's keys' prefix
	WroteConfig bool   `json:"wroteConfig"`
}

func newOwnerID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// controlPlaneKind is "etcd" with --control-plane etcd or --etcd-endpoints.
func (o Options) controlPlaneKind() string {
	if o.ControlPlane == "" && len(o.Etcd.Endpoints) > 0 {
		return ControlPlaneEtcd
	}
	return o.ControlPlane
}

// validateEtcd checks --etcd-endpoints, the TLS files and --etcd-prefix.
func (o Options) validateEtcd() error {
	e := o.Etcd
	if len(e.Endpoints) == 0 {
		switch {
		case e.Secure():
			return fmt.Errorf("--etcd-cafile/--etcd-certfile/--etcd-keyfile are for an external etcd: add --etcd-endpoints (the lab's own etcd serves plain http on its underlay)")
		case e.Prefix != "" && o.ControlPlane == "":
			return fmt.Errorf("--etcd-prefix %s needs a control plane: add --control-plane etcd or --etcd-endpoints", e.Prefix)
		}
	}
	if o.ControlPlane != "" && o.ControlPlane != ControlPlaneEtcd && len(e.Endpoints) > 0 {
		return fmt.Errorf("--etcd-endpoints is etcd's: leave out --control-plane %s (or write --control-plane etcd)", o.ControlPlane)
	}
	if o.Backend == BackendCalico && len(e.Endpoints) > 0 {
		return fmt.Errorf("--etcd-endpoints runs flanneld's leases and agents, and the calico backend spreads its blocks by BGP instead: leave --etcd-endpoints out")
	}
	return e.Validate()
}

// externalEndpoints are an external etcd's endpoints ("" for none).
func (l *Lab) externalEndpoints() string {
	if l.ControlPlane == nil || !l.ControlPlane.External {
		return ""
	}
	return strings.Join(l.ControlPlane.Endpoints, ",")
}

func (l *Lab) etcdPrefix() string {
	if l.ControlPlane == nil {
		return ""
	}
	return l.ControlPlane.KeyPrefix()
}

// hasCPNode reports whether the lab has a control-plane node (its
// embedded etcd's).
func (l *Lab) hasCPNode() bool {
	return l.ControlPlane != nil && !l.ControlPlane.External && !l.Joined()
}

// etcdctlNS is the namespace etcdctl runs in for the lab: the
// control-plane node's, or the machine's ("") for an external etcd.
func (c *Cluster) etcdctlNS() string {
	switch {
	case c.Lab.ControlPlane.External:
		return ""
	case c.Lab.Joined():
		return c.NS(MachinePortName) // over TLS to the first machine (machines.go)
	}
	return c.NS(ControlPlaneName)
}

// etcdctl is the etcdctl command line that reaches the lab's etcd.
func (c *Cluster) etcdctl() string { return etcdctlCommand(c.Lab.ControlPlane, c.etcdctlNS()) }

func etcdctlCommand(cp *ControlPlane, cpNS string) string {
	s := "etcdctl --endpoints " + strings.Join(cp.Endpoints, ",")
	for _, f := range []struct{ flag, path string }{{"--cacert", cp.CAFile}, {"--cert", cp.CertFile}, {"--key", cp.KeyFile}} {
		if f.path != "" {
			s += " " + f.flag + " " + plan.Quote(f.path)
		}
	}
	if !cp.External {
		s = "ip netns exec " + cpNS + " " + s
	}
	return s
}

// agentRedirect is the shell redirection that hands an agent supervisor
// the machine's namespace, for the equivalent command line.
func (c *Cluster) agentRedirect(proto string) string {
	if proto != "agent" || c.Lab.ControlPlane == nil || !c.Lab.ControlPlane.External {
		return ""
	}
	return fmt.Sprintf(" %d</proc/self/ns/net", agent.MachineNetnsFD)
}

// inheritMachineNetns makes an agent supervisor of a lab with an external
// etcd inherit the caller's (the machine's) network namespace on
// agent.MachineNetnsFD; done closes the caller's copy once it is started.
func (c *Cluster) inheritMachineNetns(cmd *exec.Cmd, proto string) (done func(), err error) {
	if c.agentRedirect(proto) == "" {
		return func() {}, nil
	}
	f, err := agent.OpenCallerNetns()
	if err != nil {
		return nil, fmt.Errorf("open the machine's network namespace for the agent: %w", err)
	}
	cmd.ExtraFiles = []*os.File{f}
	return func() { f.Close() }, nil
}

// ensureExternalEtcd connects to the external etcd, refuses one that
// holds another network's config, another lab's claim or Kubernetes
// objects, and claims it (with flannel's config if it has none) in one
// transaction, an operation like every write (--dry-run shows it as the
// etcdctl txn it is). Nothing is written before every check has passed.
func (c *Cluster) ensureExternalEtcd() error {
	cp := c.Lab.ControlPlane
	if c.A.DryRun {
		return c.apply(plan.Plan{c.claimOp(nil, false, new(bool))})
	}
	cli, err := c.etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	eps := strings.Join(cp.Endpoints, ",")
	for attempt := 0; attempt < 3; attempt++ {
		r, err := cli.Get(ctx, OwnerKey)
		if err != nil {
			return fmt.Errorf("etcd at %s: read %s: %w", eps, OwnerKey, err)
		}
		if len(r.Kvs) > 0 {
			var o owner
			if json.Unmarshal(r.Kvs[0].Value, &o) != nil || o.ID == "" {
				return fmt.Errorf("etcd at %s holds %s = %q, which is no lab's claim: remove it with 'etcdctl del %s', or use another etcd", eps, OwnerKey, r.Kvs[0].Value, OwnerKey)
			}
			if o.ID != cp.Owner {
				return fmt.Errorf("etcd at %s already runs lab %s's control plane (key %s = %s): one lab per etcd (the /registry objects have no prefix): destroy that lab, or use another etcd", eps, o.Lab, OwnerKey, r.Kvs[0].Value)
			}
			if !cp.Claimed { // claimed by a run that stopped before saving
				cp.Claimed = true
				if err := c.Save(); err != nil {
					return err
				}
			}
			break // ours: a repair, or the lab's next node
		}
		if k, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1)); err != nil {
			return fmt.Errorf("etcd at %s: %w", eps, err)
		} else if len(k.Kvs) > 0 {
			return fmt.Errorf("etcd at %s holds Kubernetes objects (%s, %d keys under /registry/) that a lab's would mix with: use another etcd", eps, k.Kvs[0].Key, k.Count)
		}
		have, err := c.registry(cli).Config(ctx)
		if err == nil {
			if err := c.checkNetConfig(have); err != nil {
				return err
			}
		} else if !errors.Is(err, agent.ErrNoConfig) {
			return fmt.Errorf("etcd at %s: read flannel's config: %w", eps, err)
		}
		var claimed bool
		if err := c.apply(plan.Plan{c.claimOp(cli, have != nil, &claimed)}); err != nil {
			return err
		}
		if claimed {
			cp.Claimed = true
			return c.Save() // destroy removes the claim from now on
		}
		// Another writer came between the checks and the transaction.
	}
	have, err := c.registry(cli).Config(ctx)
	if err != nil {
		return fmt.Errorf("etcd at %s: %w", eps, err)
	}
	return c.checkNetConfig(have)
}

// claimOp is the transaction that claims the etcd for the lab: OwnerKey,
// and flannel's config unless haveConfig, each only if absent. claimed
// tells whether it did.
func (c *Cluster) claimOp(cli *clientv3.Client, haveConfig bool, claimed *bool) plan.Op {
	own := owner{Lab: c.Lab.Name, ID: c.Lab.ControlPlane.Owner, Prefix: c.prefix(), WroteConfig: !haveConfig}
	ob, _ := json.Marshal(own)
	cb, _ := json.Marshal(c.netConfig())
	cfgKey := path.Join(c.prefix(), "config")
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.Version(OwnerKey), "=", 0)}
	puts := []clientv3.Op{clientv3.OpPut(OwnerKey, string(ob))}
	script := fmt.Sprintf("ver(%q) = \"0\"\n", OwnerKey)
	if !haveConfig {
		cmps = append(cmps, clientv3.Compare(clientv3.Version(cfgKey), "=", 0))
		puts = append(puts, clientv3.OpPut(cfgKey, string(cb)))
		script += fmt.Sprintf("ver(%q) = \"0\"\n", cfgKey)
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.Version(cfgKey), ">", 0))
		script += fmt.Sprintf("ver(%q) > \"0\"\n", cfgKey)
	}
	script += fmt.Sprintf("\nput %s %s\n", OwnerKey, strconv.Quote(string(ob)))
	if !haveConfig {
		script += fmt.Sprintf("put %s %s\n", cfgKey, strconv.Quote(string(cb)))
	}
	return plan.Op{Verb: plan.Exec, Why: "claim the etcd for lab " + c.Lab.Name, Proc: &plan.Proc{
		// etcdctl txn: the compares, a blank line, the requests on
		// success, a blank line, none on failure, a blank line.
		Cmd: fmt.Sprintf("%s txn <<'EOF'\n%s\n\nEOF", c.etcdctl(), script),
		Run: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			t, err := cli.Txn(ctx).If(cmps...).Then(puts...).Commit()
			if err != nil {
				return fmt.Errorf("etcd at %s: claim it for lab %s (%s): %w", strings.Join(c.Lab.ControlPlane.Endpoints, ","), c.Lab.Name, OwnerKey, err)
			}
			*claimed = t.Succeeded
			return nil
		},
	}}
}

// planEtcdCleanup is destroy's operation for a lab with an external
// etcd it claimed: remove what the lab wrote there (see the top of this
// file). An etcd that does not answer is reported on stderr, with the
// command that finishes the job, and destroy goes on.
func planEtcdCleanup(l *Lab) plan.Plan {
	cp := l.ControlPlane
	if cp == nil || !cp.External || !cp.Claimed {
		return nil
	}
	ctl := etcdctlCommand(cp, "")
	cmd := []string{}
	for _, n := range l.Nodes {
		cmd = append(cmd, ctl+" del "+path.Join(cp.KeyPrefix(), "subnets", agent.SubnetKey(n.PodCIDR)))
	}
	for _, k := range ownerKeys {
		cmd = append(cmd, ctl+" del --prefix "+k)
	}
	cmd = append(cmd, "# and "+path.Join(cp.KeyPrefix(), "config")+" if the lab wrote it")
	return plan.Plan{{Verb: plan.Exec, Proc: &plan.Proc{Cmd: strings.Join(cmd, "\n"), Run: func() error {
		if err := cleanEtcd(l); err != nil {
			fmt.Fprintf(os.Stderr, "warning: lab %s: %v, so the keys it wrote stay there; remove them with:\n%s\n", l.Name, err, strings.Join(cmd, "\n"))
		}
		return nil
	}}}}
}

func cleanEtcd(l *Lab) error {
	cp := l.ControlPlane
	cli, err := cp.EtcdConfig.Dial(agent.ViaCaller(), 2*time.Second)
	if err != nil {
		return fmt.Errorf("etcd at %s does not answer", strings.Join(cp.Endpoints, ","))
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, OwnerKey)
	if err != nil {
		return err
	}
	var o owner
	if len(r.Kvs) > 0 {
		if json.Unmarshal(r.Kvs[0].Value, &o) != nil || o.ID != cp.Owner {
			return fmt.Errorf("%s names another lab now (%s), so nothing was removed", OwnerKey, r.Kvs[0].Value)
		}
	}
	// The leases of the lab's nodes, held by the nodes' own addresses.
	reg := &agent.Registry{Cli: cli, Prefix: cp.KeyPrefix()}
	leases, _, err := reg.Leases(ctx)
	if err != nil {
		return err
	}
	for _, ls := range leases {
		for _, n := range l.Nodes {
			if ls.Subnet == n.PodCIDR && ls.PublicIP == n.IP {
				if err := reg.Delete(ctx, ls.Subnet); err != nil {
					return err
				}
			}
		}
	}
	if o.WroteConfig {
		cfg, _ := json.Marshal((&Cluster{Lab: l}).netConfig())
		k := path.Join(cp.KeyPrefix(), "config")
		if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(k), "=", string(cfg))).Then(clientv3.OpDelete(k)).Commit(); err != nil {
			return err
		}
	}
	for _, k := range ownerKeys {
		if _, err := cli.Delete(ctx, k, clientv3.WithPrefix()); err != nil {
			return err
		}
	}
	return nil
}
