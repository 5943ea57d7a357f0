// Package explain records the iproute2, bridge and iptables commands that
// would make the same kernel change as a klab operation.
//
// klab changes the kernel through netlink and iptables-restore, which is fast
// but invisible. Every mutating function in klab's packages accepts a *Log and
// appends the equivalent command line to it ("ip -n klab.demo.node1 link add
// cni0 type bridge"), so `--explain` and the labs can show students the
// commands they would type by hand, the ones the seed blog posts use. A nil
// *Log records nothing, so callers that do not care pass nil.
//
// Because every change passes through here, the package also counts them:
// CrashPoint is the crash-test hook (KLAB_CRASH_AFTER, see crash.go).
package explain

import (
	"fmt"
	"io"
	"strings"
	"sync"
)

// Log is an append-only, concurrency-safe list of equivalent commands.
type Log struct {
	mu   sync.Mutex
	cmds []string
}

// Add appends one command, formatted like fmt.Sprintf.
func (l *Log) Add(format string, args ...any) {
	CrashPoint()
	l.add(format, args...)
}

func (l *Log) add(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.cmds = append(l.cmds, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// IP appends an iproute2 command run in namespace ns: "ip -n <ns> <args>".
func (l *Log) IP(ns, format string, args ...any) {
	CrashPoint()
	if l == nil {
		return
	}
	l.add("ip -n %s %s", ns, fmt.Sprintf(format, args...))
}

// NSExec appends a command run inside namespace ns: "ip netns exec <ns> <cmd>".
func (l *Log) NSExec(ns, format string, args ...any) {
	CrashPoint()
	if l == nil {
		return
	}
	l.add("ip netns exec %s %s", ns, fmt.Sprintf(format, args...))
}

// Commands returns a copy of the recorded commands.
func (l *Log) Commands() []string {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.cmds...)
}

// Len is the number of recorded commands.
func (l *Log) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cmds)
}

// WriteTo prints the commands, one per line, each prefixed with prefix.
func (l *Log) WriteTo(w io.Writer, prefix string) {
	for _, c := range l.Commands() {
		fmt.Fprintf(w, "%s%s\n", prefix, strings.TrimSpace(c))
	}
}
