package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// BinaryName is klab's etcd server binary (cmd/klab-etcd).
const BinaryName = "klab-etcd"

// ErrNoServer is Find's error when no etcd server binary is found.
var ErrNoServer = errors.New("no etcd server to run: build it with 'make' (bin/klab-etcd) or install etcd-server")

// Binary is the etcd server klab runs.
type Binary struct {
	Path string
	// Why says where it was found ("klab-etcd beside klab", ...).
	Why string
	// Version is etcd's version ("3.4.23") for an etcd binary; "" for
	// klab-etcd, which takes every flag Args writes (see ReadVersion).
	Version string
	etcd    bool // an etcd binary, not klab-etcd
}

// Find picks the etcd server: klab-etcd in selfDir (the directory of the
// running klab, os.Executable's: make builds both into bin/), else
// klab-etcd on PATH, else etcd on PATH (Debian's etcd-server, whose
// flags klab-etcd shares), else ErrNoServer. lookPath is exec.LookPath
// (a parameter for tests). It only looks: ReadVersion asks an etcd
// binary its version.
func Find(selfDir string, lookPath func(string) (string, error)) (Binary, error) {
	if selfDir != "" {
		p := filepath.Join(selfDir, BinaryName)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return Binary{Path: p, Why: BinaryName + " beside klab"}, nil
		}
	}
	if p, err := lookPath(BinaryName); err == nil {
		return Binary{Path: p, Why: BinaryName + " on PATH"}, nil
	}
	p, err := lookPath("etcd")
	if err != nil {
		return Binary{}, ErrNoServer
	}
	return Binary{Path: p, Why: "etcd on PATH: no " + BinaryName + " beside klab or on PATH", etcd: true}, nil
}

// ReadVersion sets Version from 'etcd --version' for an etcd binary
// (klab-etcd needs none: it is built with klab).
func (b *Binary) ReadVersion() error {
	if !b.etcd {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.Path, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %v: install etcd-server again, or build klab-etcd with 'make'", b.Path, err)
	}
	if b.Version = ParseVersion(string(out)); b.Version == "" {
		return fmt.Errorf("%s --version printed no etcd version (%q): is it etcd? Build klab-etcd with 'make' (bin/klab-etcd) instead", b.Path, strings.TrimSpace(string(out)))
	}
	return nil
}

// ParseVersion reads the version from 'etcd --version' output
// ("etcd Version: 3.4.23"), or "".
func ParseVersion(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "etcd Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// atLeast reports whether version v ("3.4.23") is major.minor or later.
func atLeast(v string, major, minor int) bool {
	p := strings.SplitN(v, ".", 3)
	if len(p) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(p[0])
	mi, err2 := strconv.Atoi(p[1])
	return err1 == nil && err2 == nil && (ma > major || ma == major && mi >= minor)
}

// Argv is the command line that runs c with b, and notes on what b
// cannot do: etcd before 3.5 has no --unsafe-no-fsync (etcd-io/etcd
// CHANGELOG-3.5), so that etcd fsyncs.
func (b Binary) Argv(c Config) (argv, notes []string) {
	if c.UnsafeNoFsync && b.Version != "" && !atLeast(b.Version, 3, 5) {
		c.UnsafeNoFsync = false
		notes = append(notes, fmt.Sprintf("etcd %s has no --unsafe-no-fsync (3.5 added it): it fsyncs its WAL", b.Version))
	}
	return append([]string{b.Path}, c.Args()...), notes
}
