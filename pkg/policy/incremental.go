package policy

import (
	"bytes"
	"crypto/sha256"
	"maps"
	"slices"
	"sort"

	networkingv1 "k8s.io/api/networking/v1"
)

// Compiler compiles like Compile and remembers what it computed, the way a
// long-running policy agent (kube-router's NetworkPolicyController, Calico's
// Felix) keeps its last computation instead of starting from nothing on
// every change:
//
//   - each policy's parsed form (selectors, CIDRs, defaults), reused while
//     the policy's spec is byte-for-byte the same (its protobuf encoding);
//   - each pod chain, reused while the pod (namespace, labels, declared
//     ports) and the list of policies selecting it for that direction are
//     the same policies (egress rules to named ports, which depend on other
//     pods' ports, are always recomputed);
//   - each pod-selector set's members, reused while no pod and no
//     namespace changed (labels, addresses).
//
// A one-policy change then re-parses one policy and recompiles only the
// chains of the pods it selects. The Plan is the same as Compile's (tests
// compare them). The zero Compiler is ready; it is not safe for concurrent
// use, and Plans it returns may share chains with earlier ones (Plans are
// never modified after compiling).
type Compiler struct {
	lab    string
	pols   map[string]*cachedPolicy
	chains map[string]*cachedChain // by direction + pod key
	world  [32]byte                // pods and namespaces the sets were computed from
	sets   map[string]*IPSet       // pod-selector sets valid for world
	// nextSets collects this compile's sets; they replace sets at the end.
	nextSets map[string]*IPSet
	fresh    bool // world changed: sets must be recomputed
}

type cachedPolicy struct {
	spec []byte
	p    *policy
}

type cachedChain struct {
	pod   Pod
	sel   []*policy
	chain *Chain
	refs  []setRef
}

// setRef is a set a chain's rules name, with what computing it needs.
type setRef struct {
	pol *policy
	pe  *peer
}

// Compile is Compile, reusing what did not change since the last call.
func (cc *Compiler) Compile(s State, opts CompileOptions) (*Plan, error) {
	if cc.lab != opts.Lab || cc.pols == nil {
		*cc = Compiler{lab: opts.Lab, pols: map[string]*cachedPolicy{}, chains: map[string]*cachedChain{}}
	}
	seen := make(map[string]bool, len(s.Policies))
	ps, err := compilePoliciesWith(s.Policies, func(np *networkingv1.NetworkPolicy) (*policy, error) {
		key := np.Namespace + "/" + np.Name
		seen[key] = true
		spec, err := np.Spec.Marshal()
		if err != nil {
			return compilePolicy(np)
		}
		if c := cc.pols[key]; c != nil && c.p.np.Namespace == np.Namespace && bytes.Equal(c.spec, spec) {
			return c.p, nil
		}
		p, err := compilePolicy(np)
		if err == nil {
			cc.pols[key] = &cachedPolicy{spec: spec, p: p}
		}
		return p, err
	})
	if err != nil {
		return nil, err
	}
	for k := range cc.pols {
		if !seen[k] {
			delete(cc.pols, k)
		}
	}
	e, err := newEvaluator(s, ps)
	if err != nil {
		return nil, err
	}
	w := worldOf(s)
	cc.fresh = w != cc.world
	cc.world = w
	cc.nextSets = map[string]*IPSet{}
	p := e.compile(opts, cc)
	cc.sets, cc.nextSets = cc.nextSets, nil
	// Forget the chains of pods that are gone from this node's view.
	if len(cc.chains) > 2*len(s.Pods)+16 {
		keep := make(map[string]bool, 2*len(s.Pods))
		for i := range s.Pods {
			keep["I"+s.Pods[i].Key()], keep["E"+s.Pods[i].Key()] = true, true
		}
		for k := range cc.chains {
			if !keep[k] {
				delete(cc.chains, k)
			}
		}
	}
	return p, nil
}

// chain returns the remembered chain of pod p for direction dir when p and
// the policies selecting it are unchanged, else nil.
func (cc *Compiler) chain(dir string, p *Pod, sel []*policy) *cachedChain {
	if cc == nil {
		return nil
	}
	c := cc.chains[dir+p.Key()]
	if c == nil || !podEqual(&c.pod, p) || !slices.Equal(c.sel, sel) {
		return nil
	}
	return c
}

func (cc *Compiler) remember(dir string, p *Pod, sel []*policy, ch *Chain, refs []setRef, uncacheable bool) {
	if cc == nil {
		return
	}
	if uncacheable {
		delete(cc.chains, dir+p.Key())
		return
	}
	pod := *p
	pod.Labels, pod.Ports = maps.Clone(p.Labels), slices.Clone(p.Ports)
	cc.chains[dir+p.Key()] = &cachedChain{pod: pod, sel: sel, chain: ch, refs: refs}
}

// set returns the remembered members of pod-selector set name when no pod
// or namespace changed, else nil; either way the set computed this time is
// remembered (see keep).
func (cc *Compiler) set(name string) *IPSet {
	if cc == nil || cc.fresh {
		return nil
	}
	if s := cc.sets[name]; s != nil {
		cc.nextSets[name] = s
		return s
	}
	return nil
}

// keep remembers a pod-selector set computed in this compile.
func (cc *Compiler) keep(s *IPSet) {
	if cc != nil {
		cc.nextSets[s.Name] = s
	}
}

func podEqual(a, b *Pod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.IP == b.IP && a.Node == b.Node &&
		maps.Equal(a.Labels, b.Labels) && slices.Equal(a.Ports, b.Ports)
}

// worldOf is a digest of what pod-selector sets depend on: every pod's
// namespace, name, address and labels, and every namespace's labels.
func worldOf(s State) [32]byte {
	h := sha256.New()
	var b []byte
	label := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			b = append(append(append(append(b, k...), 0), m[k]...), 0)
		}
	}
	for i := range s.Pods {
		p := &s.Pods[i]
		b = append(append(append(append(b[:0], p.Namespace...), 0), p.Name...), 0)
		b = p.IP.AppendTo(b)
		b = append(b, 1)
		label(p.Labels)
		h.Write(b)
	}
	h.Write([]byte{2})
	for _, n := range s.Namespaces {
		b = append(append(b[:0], n.Name...), 0)
		label(n.Labels)
		h.Write(b)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
