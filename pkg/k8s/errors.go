package k8s

import (
	"fmt"
	"strings"
)

// Origin says where an object came from: a file (or "-" for standard input)
// and its 1-based document number within that file. Empty documents (only
// comments or whitespace) are not counted, as kubectl does not count them.
type Origin struct {
	File string
	Doc  int
}

func (o Origin) String() string {
	if o.File == "" && o.Doc == 0 {
		return ""
	}
	return fmt.Sprintf("%s: document %d", o.File, o.Doc)
}

// Ref names an object: its kind, namespace (empty for cluster-scoped kinds)
// and name.
type Ref struct {
	Kind      string
	Namespace string
	Name      string
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// FieldError is one problem in one document: where (Origin), which object
// (Ref, partly empty when the document could not be decoded), which field
// (a path such as spec.ports[0].port, empty for the whole document) and a
// sentence saying what is wrong.
type FieldError struct {
	Origin Origin
	Ref    Ref
	Field  string
	Detail string
}

// Error renders the error as
// "web.yaml: document 2 (Service default/web): spec.ports[0].port: 70000 is out of range 1-65535".
func (e *FieldError) Error() string {
	var b strings.Builder
	if s := e.Origin.String(); s != "" {
		b.WriteString(s)
	}
	if e.Ref.Kind != "" && e.Ref.Name != "" {
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		b.WriteString("(" + e.Ref.String() + ")")
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Detail)
	return b.String()
}

// Errors is every problem found in one Read or Validate. It is returned
// as the error (never empty when returned).
type Errors []*FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}
