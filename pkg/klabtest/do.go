package klabtest

import (
	"fmt"
	"os/exec"
	"runtime"

	"github.com/klab-dev/klab/pkg/netns"
	vnetns "github.com/vishvananda/netns"
)

// Do runs fn with the calling goroutine's work moved to a fresh OS thread
// inside the named network namespace, and waits for it.
//
// A namespace belongs to a thread, not to a goroutine, so fn runs on a
// goroutine locked to its thread (runtime.LockOSThread) for the whole call.
// The thread is switched back to its original namespace afterwards; if that
// fails, or fn panics, the goroutine exits still locked and the Go runtime
// terminates the thread instead of handing it, in the wrong namespace, to
// other goroutines (the rule of containernetworking/plugins pkg/ns, ns_linux.go,
// v1.10.0). A panic in fn is re-raised in the caller's goroutine, so the
// test fails with its stack and t.Cleanup still removes the lab.
//
// Goroutines fn starts run on other threads, in the original namespace;
// sockets fn opens stay in the pod's namespace after it returns.
func Do(ns string, fn func() error) error {
	target, err := netns.Open(ns)
	if err != nil {
		return fmt.Errorf("klabtest: open namespace %s: %w", ns, err)
	}
	defer target.Close()
	type result struct {
		err      error
		panicked bool
		value    any
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			res <- result{err: fmt.Errorf("klabtest: current namespace: %w", err)}
			return // still locked: the thread is discarded
		}
		defer orig.Close()
		if err := vnetns.Set(target); err != nil {
			res <- result{err: fmt.Errorf("klabtest: enter %s: %w", ns, err)}
			return
		}
		var r result
		func() {
			defer func() {
				if v := recover(); v != nil {
					r = result{panicked: true, value: v}
				}
			}()
			r.err = fn()
		}()
		if r.panicked {
			res <- r // fn may have left the thread in any state: discard it
			return
		}
		if err := vnetns.Set(orig); err != nil {
			res <- result{err: fmt.Errorf("klabtest: return from %s: %w (the thread is discarded)", ns, err)}
			return
		}
		runtime.UnlockOSThread()
		res <- r
	}()
	r := <-res
	if r.panicked {
		panic(fmt.Sprintf("klabtest: panic inside namespace %s: %v", ns, r.value))
	}
	return r.err
}

// Exec runs argv in the named network namespace and returns its combined
// output, without the trailing newline. The process is forked from a thread
// inside the namespace; its mount namespace (so /sys and /etc) is the
// caller's.
func Exec(ns string, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", fmt.Errorf("klabtest: no command given to run in %s", ns)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := netns.Do(ns, cmd.Start); err != nil {
		return "", fmt.Errorf("klabtest: start %s in %s: %w", argv[0], ns, err)
	}
	err := cmd.Wait()
	s := trimmed(out.Bytes())
	if err != nil {
		return s, fmt.Errorf("%s in %s: %w: %s", argv[0], ns, err, s)
	}
	return s, nil
}
