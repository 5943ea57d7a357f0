package labs

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/klab-dev/klab/pkg/netns"
)

// The sandbox every lab command runs in is package nsexec's; this file is
// what a lab file can be told about it before it runs: which commands run
// inside nodes and pods (Inside), and which of them would fail in the
// sandbox as far as their words show (SandboxProblems).

// InsideSummary is what a lab runs inside its nodes and pods: the 'klab
// exec' commands (actions and checks) by program, and its 'klab serve'
// servers.
type InsideSummary struct {
	Commands   int            // klab exec lines, actions and checks
	Programs   map[string]int // the programs they run, by name
	Servers    int            // klab serve lines that start a server
	Privileged int            // commands of blocks marked privileged (any verb)
}

// Inside counts what l runs inside its nodes and pods.
func Inside(l *Lab) InsideSummary {
	s := InsideSummary{Programs: map[string]int{}}
	for _, c := range l.Commands() {
		if c.Privileged {
			s.Privileged++
		}
		switch {
		case len(c.Args) > 0 && c.Args[0] == "serve" && !hasWord(c.Args, "--stop"):
			s.Servers++
		case execArgv(c.Args) != nil:
			s.Commands++
			s.Programs[path.Base(execArgv(c.Args)[0])]++
		}
	}
	return s
}

// ProgramList is the programs as "ip ×6, iptables-save ×3", most used first.
func (s InsideSummary) ProgramList() string {
	names := make([]string, 0, len(s.Programs))
	for n := range s.Programs {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if s.Programs[names[i]] != s.Programs[names[j]] {
			return s.Programs[names[i]] > s.Programs[names[j]]
		}
		return names[i] < names[j]
	})
	for i, n := range names {
		names[i] = fmt.Sprintf("%s ×%d", n, s.Programs[n])
	}
	return strings.Join(names, ", ")
}

func hasWord(args []string, w string) bool {
	for _, a := range args {
		if a == w {
			return true
		}
	}
	return false
}

// execArgv returns the command a 'klab exec TARGET -- CMD...' line runs,
// or nil if args is not one.
func execArgv(args []string) []string {
	if len(args) < 4 || args[0] != "exec" {
		return nil
	}
	for i, a := range args {
		if a == "--" && i+1 < len(args) {
			return args[i+1:]
		}
	}
	return nil
}

// execTarget is the TARGET of a klab exec line.
func execTarget(args []string) string {
	for _, a := range args[1:] {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			return a
		}
	}
	return ""
}

// sandboxRefused are programs whose whole job needs what the sandbox takes
// away (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_CHROOT, CAP_SYS_BOOT, other
// namespaces' files), and why.
var sandboxRefused = map[string]string{
	"nsenter":    "entering other namespaces",
	"unshare":    "new namespaces",
	"mount":      "mounting",
	"umount":     "unmounting",
	"modprobe":   "loading kernel modules",
	"insmod":     "loading kernel modules",
	"rmmod":      "unloading kernel modules",
	"chroot":     "chroot",
	"pivot_root": "pivot_root",
	"swapon":     "swap",
	"swapoff":    "swap",
	"reboot":     "rebooting",
	"shutdown":   "shutting down",
	"poweroff":   "shutting down",
	"halt":       "shutting down",
	"setcap":     "file capabilities",
	"capsh":      "capabilities",
}

// wrappers run the rest of their words as a command; the number is how
// many non-flag words they take first (timeout's duration).
var wrappers = map[string]int{"env": 0, "timeout": 1, "nice": 0, "nohup": 0, "setsid": 0, "stdbuf": 0, "exec": 0, "command": 0, "sudo": 0, "time": 0}

// writers modify the files named by their words: "all" of the non-flag
// words, the "last" one (a copy's destination), or all but the first
// ("rest": chmod's mode, chown's owner, sed's script).
var writers = map[string]string{
	"touch": "all", "mkdir": "all", "rm": "all", "rmdir": "all", "mv": "all", "tee": "all",
	"truncate": "all", "shred": "all", "mknod": "first", "mkfifo": "all", "unlink": "all",
	"cp": "last", "ln": "last", "install": "last", "rsync": "last",
	"chmod": "rest", "chown": "rest", "chgrp": "rest", "chattr": "rest", "setfacl": "rest",
}

// writableInSandbox reports whether a sandboxed command in namespace ns may
// write the absolute path p.
func writableInSandbox(p, ns string) bool {
	p = path.Clean(p)
	for _, dir := range []string{"/tmp", "/dev/shm", "/run/flannel", "/proc/sys/net", path.Join("/etc/netns", ns)} {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	switch p {
	case "/dev/null", "/dev/zero", "/dev/full", "/dev/stdout", "/dev/stderr", "/dev/tty", "/proc/self/fd/1", "/proc/self/fd/2":
		return true
	}
	return false
}

// SandboxProblems returns the commands of l that would fail in the sandbox,
// as far as their words show: a program that needs what the sandbox takes
// away (nsenter, unshare, mount, modprobe, chroot, ...), 'ip netns' (no
// namespace files there), a sysctl outside net.*, and a write (touch, rm,
// cp, tee, dd of=, sed -i, a shell redirection, ...) to an absolute path
// outside /tmp, /run/flannel, /proc/sys/net and the namespace's /etc/netns
// entry. Commands of privileged blocks are not sandboxed, so not looked at.
// What the words do not show (a script's own writes, a relative path) is
// found when the lab runs: the sandbox refuses it there.
func SandboxProblems(l *Lab) ErrorList {
	var errs ErrorList
	for _, c := range l.Commands() {
		argv := execArgv(c.Args)
		if argv == nil || c.Privileged {
			continue
		}
		ns := ""
		if t := execTarget(c.Args); t != "" && netns.ValidateLab(l.Name) == nil {
			ns = netns.Name(l.Name, t)
		}
		seen := map[string]bool{}
		for _, p := range commandProblems(argv, ns, 0) {
			if !seen[p] {
				seen[p] = true
				errs = append(errs, &Error{File: l.File, Line: c.Line, Msg: fmt.Sprintf("klab %s: %s, which the sandbox lab commands run in refuses: mark the block privileged (```klab privileged) if the lesson needs it, or change the command (see docs/security.md)", joinWords(c.Args), p)})
			}
		}
	}
	return errs
}

// commandProblems looks at one command line (argv) and, through sh -c,
// at the commands of a shell script.
func commandProblems(argv []string, ns string, depth int) []string {
	var out []string
	for len(argv) > 0 {
		prog := path.Base(argv[0])
		n, ok := wrappers[prog]
		if !ok {
			break
		}
		argv = argv[1:]
		for len(argv) > 0 && (strings.HasPrefix(argv[0], "-") || strings.Contains(argv[0], "=") || n > 0) {
			if !strings.HasPrefix(argv[0], "-") && !strings.Contains(argv[0], "=") {
				n--
			}
			argv = argv[1:]
		}
	}
	if len(argv) == 0 {
		return nil
	}
	prog := path.Base(argv[0])
	args := argv[1:]
	var operands []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" {
			operands = append(operands, a)
		}
	}
	write := func(p string) {
		if strings.HasPrefix(p, "/") && !writableInSandbox(p, ns) {
			out = append(out, fmt.Sprintf("it writes %s (the host's files are read-only)", p))
		}
	}
	switch {
	case sandboxRefused[prog] != "":
		out = append(out, fmt.Sprintf("it runs %s (%s)", prog, sandboxRefused[prog]))
	case prog == "ip" || prog == "ip6":
		for i, a := range args {
			if a == "netns" && i+1 < len(args) && args[i+1] != "list" && args[i+1] != "ls" && args[i+1] != "identify" && (i == 0 || strings.HasPrefix(args[0], "-")) {
				out = append(out, fmt.Sprintf("it runs ip netns %s (no namespace files and no CAP_SYS_ADMIN in the sandbox)", args[i+1]))
				break
			}
			if a == "netns" && i > 0 && i+1 < len(args) && (args[0] == "link" || args[0] == "l") && !isNumber(args[i+1]) {
				out = append(out, fmt.Sprintf("it moves a link into namespace %s (no namespace files in the sandbox)", args[i+1]))
				break
			}
		}
	case prog == "sysctl":
		for _, a := range operands {
			if k, _, ok := strings.Cut(a, "="); ok {
				k = strings.ReplaceAll(k, "/", ".")
				if !strings.HasPrefix(k, "net.") {
					out = append(out, fmt.Sprintf("it sets %s (only net.* sysctls, this namespace's own, are writable)", k))
				}
			}
		}
	case prog == "dd":
		for _, a := range args {
			if p, ok := strings.CutPrefix(a, "of="); ok {
				write(p)
			}
		}
	case prog == "sed" || prog == "perl":
		inPlace := false
		for _, a := range args {
			inPlace = inPlace || a == "-i" || strings.HasPrefix(a, "-i") || a == "--in-place" || strings.HasPrefix(a, "--in-place=")
		}
		if inPlace && len(operands) > 1 {
			for _, p := range operands[1:] {
				write(p)
			}
		}
	case (prog == "sh" || prog == "bash" || prog == "dash" || prog == "ash" || prog == "zsh" || prog == "busybox") && depth < 3:
		for i, a := range args {
			if a == "-c" && i+1 < len(args) {
				for _, cmd := range shellCommands(args[i+1]) {
					out = append(out, commandProblems(cmd.argv, ns, depth+1)...)
					for _, r := range cmd.redirects {
						write(r)
					}
				}
				break
			}
		}
	case writers[prog] != "":
		switch writers[prog] {
		case "all":
			for _, p := range operands {
				write(p)
			}
		case "first":
			if len(operands) > 0 {
				write(operands[0])
			}
		case "last":
			if len(operands) > 1 {
				write(operands[len(operands)-1])
			}
		case "rest":
			if len(operands) > 1 {
				for _, p := range operands[1:] {
					write(p)
				}
			}
		}
	}
	return out
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// shellCommand is one simple command of a shell script: its words and the
// files its output redirections write.
type shellCommand struct {
	argv      []string
	redirects []string
}

// shellCommands splits a shell script, roughly, into simple commands at
// ; & | && || and newlines, with their output redirections (>, >>, 2>,
// &>) apart. Quotes are honoured; anything fancier (expansions,
// functions) is taken word for word: this is a lint, the sandbox decides.
func shellCommands(script string) []shellCommand {
	var out []shellCommand
	var cur shellCommand
	var word strings.Builder
	inWord, redirect := false, false
	flushWord := func() {
		if !inWord {
			return
		}
		w := word.String()
		word.Reset()
		inWord = false
		if redirect {
			cur.redirects = append(cur.redirects, w)
			redirect = false
			return
		}
		cur.argv = append(cur.argv, w)
	}
	flushCmd := func() {
		flushWord()
		if len(cur.argv) > 0 || len(cur.redirects) > 0 {
			out = append(out, cur)
		}
		cur = shellCommand{}
	}
	for i := 0; i < len(script); i++ {
		ch := script[i]
		switch {
		case ch == '\'' || ch == '"':
			j := strings.IndexByte(script[i+1:], ch)
			if j < 0 {
				j = len(script) - i - 1
			}
			word.WriteString(script[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case ch == '\\' && i+1 < len(script):
			word.WriteByte(script[i+1])
			inWord = true
			i++
		case ch == ' ' || ch == '\t':
			flushWord()
		case ch == ';' || ch == '\n' || ch == '|' || ch == '(' || ch == ')':
			flushCmd()
		case ch == '&':
			if i+1 < len(script) && script[i+1] == '>' { // &> file
				flushWord()
				redirect = true
				i++
				if i+1 < len(script) && script[i+1] == '>' {
					i++
				}
				continue
			}
			flushCmd()
		case ch == '>':
			// 2>file, >file, >>file; >&2 duplicates a descriptor.
			w := word.String()
			if inWord && isNumber(w) {
				word.Reset()
				inWord = false
			} else {
				flushWord()
			}
			if i+1 < len(script) && script[i+1] == '>' {
				i++
			}
			if i+1 < len(script) && script[i+1] == '&' {
				i++
				for i+1 < len(script) && script[i+1] >= '0' && script[i+1] <= '9' {
					i++
				}
				continue
			}
			redirect = true
		case ch == '<':
			flushWord()
		default:
			word.WriteByte(ch)
			inWord = true
		}
	}
	flushCmd()
	return out
}
