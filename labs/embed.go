package labs

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// files holds the labs shipped with klab.
//
//go:embed *.md manifests
var files embed.FS

// WriteFiles copies the files an embedded lab ships beside it (its
// manifests, under manifests/<lab>/) into dir, keeping their layout
// ("manifests/<lab>/x.yaml"), so that the lab's 'klab apply -f
// manifests/<lab>/x.yaml' finds them through $KLAB_LAB_DIR. It reports
// whether the lab has any.
func WriteFiles(name, dir string) (bool, error) {
	root := path.Join("manifests", name)
	if _, err := fs.Stat(files, root); err != nil {
		return false, nil
	}
	err := fs.WalkDir(files, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := dir + "/" + p
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	return err == nil, err
}

// Names returns the names of the embedded labs, sorted.
func Names() []string {
	ents, _ := fs.ReadDir(files, ".")
	var out []string
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".md") {
			out = append(out, strings.TrimSuffix(n, ".md"))
		}
	}
	sort.Strings(out)
	return out
}

// Embedded returns the source of the embedded lab name.
func Embedded(name string) ([]byte, bool) {
	if name == "" || strings.ContainsAny(name, "/\\") {
		return nil, false
	}
	b, err := files.ReadFile(name + ".md")
	return b, err == nil
}

// List parses every embedded lab, in name order.
func List() ([]*Lab, error) {
	var out []*Lab
	for _, n := range Names() {
		l, err := Load(n)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// IsPath reports whether arg names a file rather than an embedded lab.
func IsPath(arg string) bool {
	return strings.ContainsAny(arg, "/\\") || strings.HasSuffix(arg, ".md")
}

// Read returns the source of a lab given as an embedded name or a path, and
// the name to use for it in messages.
func Read(arg string) (src []byte, file string, err error) {
	if !IsPath(arg) {
		b, ok := Embedded(arg)
		if !ok {
			return nil, "", fmt.Errorf("there is no lab named %q: see 'klab labs' for the labs klab ships, or give the path of a .md file", arg)
		}
		return b, path.Join("labs", arg+".md"), nil
	}
	b, err := os.ReadFile(arg)
	if err != nil {
		return nil, "", fmt.Errorf("cannot read lab file: %w", err)
	}
	return b, arg, nil
}

// Load reads and parses a lab given as an embedded name or a path.
func Load(arg string) (*Lab, error) {
	src, file, err := Read(arg)
	if err != nil {
		return nil, err
	}
	return Parse(file, src)
}
