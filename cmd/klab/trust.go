package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klab-dev/klab/labs"
)

// trustFlags are how 'klab run' (and 'klab lab check') are told to trust a
// lab more than the sandbox does.
type trustFlags struct {
	trust           bool // run every command unsandboxed: a lab you wrote yourself
	allowPrivileged bool // run the blocks marked privileged unsandboxed without asking
}

// confirmLab is what 'klab run' asks before a lab runs anything: for a lab
// file that is not one of klab's own, where it comes from and what it runs
// inside nodes and pods (skipped with --yes, which still sandboxes); for a
// lab with privileged blocks, those blocks, once (--yes does not answer
// that, --allow-privileged or --trust does). in is read a byte at a time,
// so the runner's step prompts get the rest of it. It returns an error when
// the answer is no (or there is no answer), before anything ran.
func confirmLab(arg string, l *labs.Lab, tf trustFlags, yes bool, in io.Reader, out io.Writer) error {
	external := labs.IsPath(arg)
	priv := l.PrivilegedBlocks()
	askSource := external && !yes
	askPriv := len(priv) > 0 && !tf.allowPrivileged && !tf.trust
	if !askSource && !askPriv {
		if len(priv) > 0 && !tf.trust {
			fmt.Fprintf(out, "klab: %s: %d privileged block(s) (%s) run unsandboxed (--allow-privileged).\n", l.File, len(priv), blockLines(priv))
		}
		return nil
	}
	if askSource {
		fmt.Fprintf(out, "This lab file is not one of klab's own labs:\n")
		fmt.Fprintf(out, "  file:     %s\n", sourceLine(arg))
		s := labs.Inside(l)
		fmt.Fprintf(out, "  runs:     %d command(s) inside nodes and pods", s.Commands)
		if s.Commands > 0 {
			fmt.Fprintf(out, " (%s)", s.ProgramList())
		}
		fmt.Fprintf(out, ", %d server(s), and %d klab verb(s)\n", s.Servers, len(l.Commands())-s.Commands-s.Servers)
		if tf.trust {
			fmt.Fprintf(out, "  sandbox:  OFF (--trust): every command runs with full root on this machine\n")
		} else {
			fmt.Fprintf(out, "  sandbox:  on: the host's files are read-only to them, no other namespace,\n")
			fmt.Fprintf(out, "            process or kernel module is reachable (docs/security.md)\n")
			if probs := labs.SandboxProblems(l); len(probs) > 0 {
				fmt.Fprintf(out, "  note:     %d command(s) will fail in the sandbox (see 'klab lab lint %s')\n", len(probs), arg)
			}
		}
		fmt.Fprintf(out, "  read it first with: klab lab show %s\n", arg)
	}
	if askPriv {
		fmt.Fprintf(out, "%s marks %d block(s) privileged: their commands run UNSANDBOXED, with full root on this machine:\n", l.File, len(priv))
		for _, b := range priv {
			fmt.Fprintf(out, "  line %d:\n", b.Line)
			for _, c := range b.Commands {
				fmt.Fprintf(out, "    %s\n", c.Text)
			}
			for _, c := range b.Checks {
				fmt.Fprintf(out, "    %s\n", c.Text)
			}
		}
	}
	question := "Run it? [y/N] "
	if askPriv {
		question = "Run it, privileged blocks unsandboxed? [y/N] "
	}
	fmt.Fprint(out, question)
	answer, err := readAnswer(in)
	fmt.Fprintln(out)
	if err == nil && (answer == "y" || answer == "yes") {
		return nil
	}
	how := "--yes runs it sandboxed without asking"
	if askPriv {
		how = "--allow-privileged runs its privileged blocks unsandboxed without asking (--yes does not)"
	}
	if err != nil {
		return exitError{code: 1, msg: fmt.Sprintf("%s was not run: no answer on stdin (%s)", arg, how)}
	}
	return exitError{code: 1, msg: fmt.Sprintf("%s was not run (%s)", arg, how)}
}

// requirePrivileged is confirmLab for verbs that do not ask (klab lab
// check): a lab with privileged blocks needs --allow-privileged or --trust.
func requirePrivileged(l *labs.Lab, tf trustFlags) error {
	if priv := l.PrivilegedBlocks(); len(priv) > 0 && !tf.allowPrivileged && !tf.trust {
		return exitError{code: 1, msg: fmt.Sprintf("%s marks %d block(s) privileged (%s): they run unsandboxed, with full root; read them ('klab lab show %s') and rerun with --allow-privileged", l.File, len(priv), blockLines(priv), l.File)}
	}
	return nil
}

func blockLines(bs []labs.Block) string {
	var s []string
	for _, b := range bs {
		s = append(s, fmt.Sprintf("line %d", b.Line))
	}
	return strings.Join(s, ", ")
}

// sourceLine says where a lab file comes from: its absolute path, owner,
// modification time and SHA-256.
func sourceLine(arg string) string {
	abs, err := filepath.Abs(arg)
	if err != nil {
		abs = arg
	}
	line := abs
	if fi, err := os.Stat(arg); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			line += fmt.Sprintf(", owner uid %d", st.Uid)
		}
		line += ", modified " + fi.ModTime().Format("2006-01-02 15:04")
	}
	if b, err := os.ReadFile(arg); err == nil {
		line += fmt.Sprintf(", sha256 %x", sha256.Sum256(b))[:len(", sha256 ")+16]
	}
	return line
}

// readAnswer reads one line, a byte at a time (nothing more is consumed).
func readAnswer(in io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		n, err := in.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				break
			}
			b = append(b, one[0])
			continue
		}
		if err != nil {
			if len(b) > 0 {
				break
			}
			return "", err
		}
	}
	return strings.ToLower(strings.TrimSpace(string(b))), nil
}
