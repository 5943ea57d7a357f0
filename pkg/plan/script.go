package plan

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ScriptHeader starts every script klab writes.
const ScriptHeader = `#!/bin/sh
# Written by klab: the kernel changes of a lab, as the commands that make
# them (iproute2, bridge, sysctl, iptables-restore). Run it as root on a
# machine without the lab: sh FILE. Files under /run/klab are the ones
# klab's CNI-like IPAM and flannel keep; klab's own state file is named
# in a comment, not written.
set -e
`

// WriteScript writes the plan's commands under a title comment (the klab
// command that made them), each followed by a newline; heredocs are kept
// unindented so the script runs as written.
func WriteScript(w io.Writer, title string, p Plan) error {
	var b strings.Builder
	if title != "" {
		fmt.Fprintf(&b, "\n# %s\n", title)
	}
	for _, op := range p {
		b.WriteString(op.Command())
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// AppendScript appends the plan to the script file at path, creating it
// (with ScriptHeader, mode 0755) when it does not exist or is empty.
func AppendScript(path, title string, p Plan) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o755)
	if err != nil {
		return fmt.Errorf("script %s: %w", path, err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() == 0 {
		_, err = io.WriteString(f, ScriptHeader)
	}
	if err == nil {
		err = WriteScript(f, title, p)
	}
	return errors.Join(err, f.Close())
}
