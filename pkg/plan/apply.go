package plan

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/klab-dev/klab/pkg/netns"
	"github.com/vishvananda/netlink"
)

// ErrInterrupted is wrapped by the error of an apply stopped through
// Applier.Ctx (Ctrl-C), after it rolled back what it had created.
var ErrInterrupted = errors.New("interrupted")

// Applier executes plans. It is the only place where klab changes the
// kernel. One Applier serves one command: it caches a netlink handle and
// the device indexes per namespace, records every operation that ran (Ran,
// for --explain and --script), and journals the objects it created so that
// RollbackTo can remove them again. It is safe for concurrent use.
type Applier struct {
	// Ctx, when not nil, interrupts an apply between two operations
	// (Ctrl-C); the error then wraps ErrInterrupted.
	Ctx context.Context
	// DryRun records the operations without executing anything.
	DryRun bool
	// Simulate, with DryRun, plans against an empty machine: Read returns
	// an empty State for every namespace, and file operations (klab's state
	// and IPAM files, subnet.env) do run, so that a sequence of commands
	// pointed at a scratch state directory plans each step after the ones
	// before it ('klab run LAB --dry-run').
	Simulate bool
	// Overlap lets an iptables-restore run in the background while the
	// rest of its plan runs (bulk builds: the exec is the slowest step and
	// needs only the namespace). Off, operations run strictly in order,
	// which the crash tests' numbered points rely on.
	Overlap bool
	// Discard keeps no list of the operations that ran (Ran is empty): for
	// bulk builds nobody prints (a 100-node lab runs 40,000 operations).
	// Dry runs always keep it.
	Discard bool

	mu      sync.Mutex
	handles map[string]*netlink.Handle
	index   map[string]map[string]int // namespace -> device name -> ifindex
	ran     []Op
	journal []Op // executed operations that created something, in order
	// fresh holds the namespaces journaled since the last Mark: what is
	// created inside them goes with them, so it is not journaled one by
	// one.
	fresh map[string]bool
}

// Ran returns the operations that ran (or, in a dry run, would have), in
// order. Operations of plans applied in parallel are listed plan by plan.
func (a *Applier) Ran() Plan {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(Plan(a.ran))
}

// Reset forgets the recorded operations (not the journal).
func (a *Applier) Reset() {
	a.mu.Lock()
	a.ran = nil
	a.mu.Unlock()
}

// Close releases the netlink handles.
func (a *Applier) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.handles {
		h.Close()
	}
	a.handles, a.index = nil, nil
}

// Forget drops the cached handle and device indexes of a namespace (it was
// deleted, or changed behind klab's back).
func (a *Applier) Forget(ns string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, ok := a.handles[ns]; ok {
		h.Close()
		delete(a.handles, ns)
	}
	delete(a.index, ns)
}

// ForgetAll drops every cached handle and index.
func (a *Applier) ForgetAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.handles {
		h.Close()
	}
	a.handles, a.index = nil, nil
}

// Handle returns the (cached) netlink handle of namespace ns, for readers.
func (a *Applier) Handle(ns string) (*netlink.Handle, error) { return a.handle(ns) }

func (a *Applier) handle(ns string) (*netlink.Handle, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, ok := a.handles[ns]; ok {
		return h, nil
	}
	h, err := netns.Handle(ns)
	if err != nil {
		return nil, err
	}
	if a.handles == nil {
		a.handles = map[string]*netlink.Handle{}
	}
	a.handles[ns] = h
	return h, nil
}

// remember caches device indexes read from a namespace.
func (a *Applier) remember(ns string, byIndex map[int]*LinkState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.indexes(ns)
	for i, l := range byIndex {
		m[l.Name] = i
	}
}

func (a *Applier) indexes(ns string) map[string]int {
	if a.index == nil {
		a.index = map[string]map[string]int{}
	}
	m := a.index[ns]
	if m == nil {
		m = map[string]int{}
		a.index[ns] = m
	}
	return m
}

func (a *Applier) setIndex(ns, name string, idx int) {
	a.mu.Lock()
	if idx > 0 {
		a.indexes(ns)[name] = idx
	} else if a.index != nil {
		delete(a.index[ns], name)
	}
	a.mu.Unlock()
}

// ifindex resolves a device name in ns, from the cache or the kernel.
func (a *Applier) ifindex(ns, name string) (int, error) {
	a.mu.Lock()
	idx, ok := a.indexes(ns)[name]
	a.mu.Unlock()
	if ok {
		return idx, nil
	}
	h, err := a.handle(ns)
	if err != nil {
		return 0, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find %s in %s: %w", name, ns, err)
	}
	a.setIndex(ns, name, l.Attrs().Index)
	return l.Attrs().Index, nil
}

// Mark returns the journal position, for RollbackTo.
func (a *Applier) Mark() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fresh = nil
	return len(a.journal)
}

// Apply runs a plan in order. It stops at the first failure (or at Ctrl-C)
// and returns the error naming the operation; what the plan created is
// still there: the caller decides, usually with RollbackTo(mark).
func (a *Applier) Apply(p Plan) error { return a.ApplyAll([]Plan{p}, 1) }

// ApplyAll runs independent plans (no plan needs what another creates) on
// up to workers goroutines; each plan runs in order. After a failure no
// further plan starts; the error of the lowest-numbered plan that failed
// is returned once every started plan has stopped.
func (a *Applier) ApplyAll(plans []Plan, workers int) error {
	return a.ApplyEach(len(plans), workers, func(i int) (Plan, error) { return plans[i], nil })
}

// ApplyEach is ApplyAll for n plans made on the worker that runs them,
// just before: a bulk build holds a few nodes' plans in memory, not all of
// them (100 nodes x 10 pods is 40,000 operations).
func (a *Applier) ApplyEach(n, workers int, plan func(i int) (Plan, error)) error {
	workers = max(1, min(workers, n))
	ran := make([][]Op, n)
	errs := make([]error, n)
	var mu sync.Mutex
	next, failed := 0, false
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := failed || i >= n
				mu.Unlock()
				if stop {
					return
				}
				p, err := plan(i)
				if err == nil {
					ran[i], err = a.run(p)
				}
				errs[i] = err
				if errs[i] != nil {
					mu.Lock()
					failed = true
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if !a.Discard || a.DryRun {
		a.mu.Lock()
		for _, r := range ran {
			a.ran = append(a.ran, r...)
		}
		a.mu.Unlock()
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// run executes one plan and returns the operations that ran (unless
// Discard).
func (a *Applier) run(p Plan) (ran []Op, err error) {
	keep := !a.Discard || a.DryRun
	record := func(ops ...Op) {
		if keep {
			ran = append(ran, ops...)
		}
	}
	var bg []chan error
	defer func() {
		for _, c := range bg {
			if berr := <-c; err == nil {
				err = berr
			}
		}
		// The handles of namespaces this plan created go: a bulk build
		// creates a thousand namespaces and touches each in one plan
		// (a later use opens the handle again).
		for _, op := range p {
			if op.Verb == NetnsAdd {
				a.Forget(op.NS)
			}
		}
	}()
	for i := 0; i < len(p); {
		if a.Ctx != nil && a.Ctx.Err() != nil {
			return ran, fmt.Errorf("stopped before %s: %w", p[i].Object(), ErrInterrupted)
		}
		if a.DryRun {
			if a.Simulate && (p[i].Verb == WriteFile || p[i].Verb == RemoveFile) {
				if err := a.exec(p[i]); err != nil {
					return ran, err
				}
			}
			record(p[i])
			i++
			continue
		}
		if n := a.batchable(p[i:]); n > 1 {
			if err := a.batch(p[i : i+n]); err != nil {
				return ran, err
			}
			for _, op := range p[i : i+n] {
				record(op)
				a.journalOp(op)
				CrashPoint()
			}
			i += n
			continue
		}
		op := p[i]
		if op.Verb == IPSet && len(bg) > 0 {
			// A set is destroyed only after the rules naming it are gone,
			// and created before the rules naming it are loaded: ipset
			// restores wait for the iptables-restores started before them.
			var berr error
			for _, c := range bg {
				if e := <-c; berr == nil {
					berr = e
				}
			}
			if bg = nil; berr != nil {
				return ran, berr
			}
		}
		if a.Overlap && op.Verb == Restore {
			c := make(chan error, 1)
			go func() {
				err := a.exec(op)
				if err == nil {
					CrashPoint()
				}
				c <- err
			}()
			bg = append(bg, c)
			record(op)
			i++
			continue
		}
		if err := a.exec(op); err != nil {
			return ran, err
		}
		record(op)
		a.journalOp(op)
		CrashPoint()
		i++
	}
	return ran, nil
}

func (a *Applier) journalOp(op Op) {
	if !op.New {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case op.Verb == NetnsAdd:
		if a.fresh == nil {
			a.fresh = map[string]bool{}
		}
		a.fresh[op.NS] = true
	case op.NS != "" && a.fresh[op.NS] && (op.Verb != LinkAdd || op.Link.PeerNS == "" || a.fresh[op.Link.PeerNS]):
		return // goes with its namespace
	}
	a.journal = append(a.journal, op)
}

// RollbackTo removes what the operations journaled since mark created, in
// reverse order: namespaces are deleted (with everything inside them),
// devices, addresses, routes and entries made in namespaces that existed
// before are deleted one by one, files removed. It is best effort and
// returns the first error; the undo operations are recorded like any other.
func (a *Applier) RollbackTo(mark int) error {
	a.mu.Lock()
	if mark > len(a.journal) {
		mark = len(a.journal)
	}
	done := slices.Clone(a.journal[mark:])
	a.journal = a.journal[:mark]
	a.mu.Unlock()
	created := map[string]bool{}
	for _, op := range done {
		if op.Verb == NetnsAdd {
			created[op.NS] = true
		}
	}
	var first error
	for i := len(done) - 1; i >= 0; i-- {
		op := done[i]
		if op.Verb != NetnsAdd && op.NS != "" && created[op.NS] {
			continue // goes with its namespace
		}
		if op.Verb == LinkAdd && op.Link.PeerNS != "" && created[op.Link.PeerNS] && created[op.NS] {
			continue
		}
		undo, ok := op.Undo()
		if !ok {
			continue
		}
		if err := a.exec(undo); err != nil && !IsNotFound(err) && first == nil {
			first = err
		}
		a.mu.Lock()
		a.ran = append(a.ran, undo)
		a.mu.Unlock()
	}
	return first
}
