package labs

import (
	"fmt"
	"slices"
	"strings"
)

// Validator checks one klab command (the words after "klab") against the real
// command tree without running it: the verb must exist, its flags must parse
// and its positional arguments must be acceptable. The cmd layer provides it,
// so this package needs no knowledge of the verbs.
type Validator func(args []string) error

// Lint checks a parsed lab beyond its syntax: every command is validated
// (when validate is not nil), commands must not choose the lab or state
// directory themselves (the runner does), labs cannot run labs, and the
// backend named in the front matter must agree with the lab's node add
// commands, iptables commands must wait for the xtables lock (-w), and no
// command may name a host file for klab to write (--script, --pcap) or
// turn the sandbox off (--sandbox=false). What would fail inside the
// sandbox is SandboxProblems'. It returns an ErrorList, or nil.
func Lint(l *Lab, validate Validator) error {
	var errs ErrorList
	add := func(line int, format string, args ...any) {
		errs = append(errs, &Error{File: l.File, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	hostGWNode, firstNode, calicoNode := false, false, false
	for _, c := range l.Commands() {
		flags := c.Args
		for i, a := range c.Args {
			if a == "--" {
				flags = c.Args[:i]
				break
			}
		}
		switch c.Args[0] {
		case "run", "lab", "labs":
			add(c.Line, "a lab cannot run \"klab %s\": labs hold the verbs a student would type (node, pod, exec, ...)", c.Args[0])
			continue
		}
		bad := false
		for _, f := range flags {
			for _, g := range []string{"--lab", "--state-dir"} {
				if f == g || strings.HasPrefix(f, g+"=") {
					add(c.Line, "%s in a lab command: the runner selects the lab (use 'klab run LAB --lab NAME' to pick another instance name)", g)
					bad = true
				}
			}
		}
		for _, f := range flags {
			for _, g := range []string{"--script", "--pcap"} {
				if f == g || strings.HasPrefix(f, g+"=") {
					add(c.Line, "%s in a lab command: a lab cannot name files on the host for klab to write (run 'klab run LAB --script FILE' to collect the lab's commands)", g)
					bad = true
				}
			}
			if f == "--sandbox=false" {
				add(c.Line, "--sandbox=false in a lab command: a lab's commands run sandboxed; mark the block privileged (```klab privileged) if the lesson needs full root")
				bad = true
			}
		}
		if bad {
			continue
		}
		if len(c.Args) > 1 && c.Args[0] == "node" && c.Args[1] == "add" {
			dns := slices.Contains(flags, "--dns") || slices.Contains(flags, "--dns=true")
			cp := flagValue(flags, "--control-plane")
			if cp == "" && flagValue(flags, "--etcd-endpoints") != "" {
				cp = "etcd" // an external etcd is the etcd control plane
			}
			if cp != "" && cp != l.ControlPlane {
				add(c.Line, "this node add has --control-plane %s but the front matter does not say control-plane: %s: add it, so 'klab labs' and lint know the lab runs a control plane", cp, cp)
			} else if l.ControlPlane != "" && !firstNode && cp == "" {
				add(c.Line, "the front matter says control-plane: %s, but the lab's first node add lacks --control-plane %s (or --etcd-endpoints; it is chosen when a lab is created): add it", l.ControlPlane, l.ControlPlane)
			}
			switch {
			case dns && !l.DNS:
				add(c.Line, "this node add has --dns but the front matter does not say dns: true: add it, so 'klab labs' and lint know the lab runs cluster DNS")
			case l.DNS && !firstNode && !dns:
				add(c.Line, "the front matter says dns: true, but the lab's first node add lacks --dns (cluster DNS is chosen when a lab is created): add --dns")
			}
			if pm := flagValue(flags, "--proxy-mode"); (pm != "" || !firstNode) && pm != l.ProxyMode && !(pm == "" && l.ProxyMode == "iptables") && !(pm == "iptables" && l.ProxyMode == "") {
				add(c.Line, "this node add has --proxy-mode %q but the front matter says proxy-mode: %q (the mode is chosen by the lab's first node add): make them agree", pm, l.ProxyMode)
			}
			if pm := flagValue(flags, "--proxy-mode"); (pm != "" || !firstNode) && pm != l.ProxyMode && !(pm == "" && l.ProxyMode == "iptables") && !(pm == "iptables" && l.ProxyMode == "") {
				add(c.Line, "this node add has --proxy-mode %q but the front matter says proxy-mode: %q (the mode is chosen by the lab's first node add): make them agree", pm, l.ProxyMode)
			}
			firstNode = true
		}
		if b := flagValue(flags, "--backend"); b != "" && len(c.Args) > 1 && c.Args[0] == "node" && c.Args[1] == "add" {
			want := l.Backend
			if want == "" {
				want = "vxlan"
			}
			if b != want {
				add(c.Line, "this node uses --backend %s but the front matter says backend: %s: make them agree", b, want)
			}
			hostGWNode = hostGWNode || b == "host-gw"
			calicoNode = calicoNode || b == "calico"
		}
		if validate != nil {
			if err := validate(c.Args); err != nil {
				add(c.Line, "klab %s: %v", joinWords(c.Args), err)
			}
		}
	}
	for _, c := range l.Commands() { // actions and checks
		if tool := xtablesNoWait(c.Args); tool != "" {
			add(c.Line, "%s without -w: it fails at once when another command holds the xtables lock (a second lab being built, say); write '%s -w ...'", tool, tool)
		}
	}
	if l.Backend == "calico" && !calicoNode {
		add(1, "backend: calico, but no \"klab node add ... --backend calico\" builds the lab that way: add the flag to the first node add")
	}
	if l.Backend == "host-gw" && !hostGWNode {
		add(1, "backend: host-gw, but no \"klab node add ... --backend host-gw\" builds the lab that way: add the flag to the first node add")
	}
	return errs.err()
}

// flagValue returns the value of a --name VALUE or --name=VALUE flag.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}
