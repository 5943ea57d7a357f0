package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Object is one decoded manifest document: the typed object (one of
// *corev1.Namespace, *corev1.Pod, *appsv1.Deployment, *corev1.Service,
// *networkingv1.NetworkPolicy) and where it came from.
type Object struct {
	Origin Origin
	Obj    metav1.Object
}

// Ref returns the object's kind, namespace and name as written (before
// defaulting the namespace).
func (o Object) Ref() Ref {
	return Ref{Kind: kindOf(o.Obj), Namespace: o.Obj.GetNamespace(), Name: o.Obj.GetName()}
}

func kindOf(o metav1.Object) string {
	switch o.(type) {
	case *corev1.Namespace:
		return "Namespace"
	case *corev1.Pod:
		return "Pod"
	case *appsv1.Deployment:
		return "Deployment"
	case *corev1.Service:
		return "Service"
	case *networkingv1.NetworkPolicy:
		return "NetworkPolicy"
	}
	return fmt.Sprintf("%T", o)
}

// kinds lists what klab accepts: kind -> the one apiVersion it is read in.
var kinds = map[string]string{
	"Namespace":     "v1",
	"Pod":           "v1",
	"Service":       "v1",
	"Deployment":    "apps/v1",
	"NetworkPolicy": "networking.k8s.io/v1",
}

// Kinds returns the supported kinds with their apiVersion, sorted, e.g.
// "apps/v1 Deployment".
func Kinds() []string {
	var out []string
	for k, v := range kinds {
		out = append(out, v+" "+k)
	}
	sort.Strings(out)
	return out
}

// Read decodes the manifests at path: a file, a directory (its *.yaml,
// *.yml and *.json files in name order, not recursive) or "-" for stdin.
// Errors name the file and document; a document that cannot be decoded does
// not stop the others from being checked.
func Read(path string, stdin io.Reader) ([]Object, error) {
	if path == "-" {
		if stdin == nil {
			stdin = os.Stdin
		}
		return Decode("-", stdin)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	files := []string{path}
	if fi.IsDir() {
		ents, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		files = files[:0]
		for _, e := range ents {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					files = append(files, filepath.Join(path, e.Name()))
				}
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("%s: no *.yaml, *.yml or *.json files", path)
		}
	}
	var objs []Object
	var errs Errors
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		o, err := Decode(f, fh)
		fh.Close()
		objs = append(objs, o...)
		if err != nil {
			var es Errors
			if !errors.As(err, &es) {
				return nil, err
			}
			errs = append(errs, es...)
		}
	}
	if len(errs) > 0 {
		return objs, errs
	}
	return objs, nil
}

// Decode reads every document of a multi-document YAML or JSON stream
// (documents separated by "---"; a kind: List document contributes its
// items under its own document number). name is used in errors. Unknown
// fields are errors (kubectl's --validate=strict, its default). The objects
// that decoded are returned alongside the Errors for the others.
func Decode(name string, r io.Reader) ([]Object, error) {
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var objs []Object
	var errs Errors
	doc := 0
	for {
		raw, err := yr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			errs = append(errs, &FieldError{Origin: Origin{name, doc + 1}, Detail: err.Error()})
			break
		}
		if isEmptyDoc(raw) {
			continue
		}
		doc++
		o := Origin{name, doc}
		got, derrs := decodeDoc(o, raw)
		objs = append(objs, got...)
		errs = append(errs, derrs...)
	}
	if len(errs) > 0 {
		return objs, errs
	}
	return objs, nil
}

func isEmptyDoc(raw []byte) bool {
	for _, line := range bytes.Split(raw, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) == 0 || t[0] == '#' || string(t) == "---" {
			continue
		}
		return false
	}
	return true
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func decodeDoc(o Origin, raw []byte) ([]Object, Errors) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, Errors{{Origin: o, Detail: "not valid YAML or JSON: " + err.Error()}}
	}
	var tm typeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, Errors{{Origin: o, Detail: "not a Kubernetes object (expected a mapping with apiVersion and kind): " + err.Error()}}
	}
	ref := Ref{Kind: tm.Kind, Namespace: tm.Metadata.Namespace, Name: tm.Metadata.Name}
	if tm.Kind == "" {
		return nil, Errors{{Origin: o, Ref: ref, Field: "kind", Detail: "required (one of " + strings.Join(Kinds(), ", ") + ")"}}
	}
	if tm.APIVersion == "" {
		return nil, Errors{{Origin: o, Ref: ref, Field: "apiVersion", Detail: "required"}}
	}
	if tm.Kind == "List" && tm.APIVersion == "v1" {
		var l struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(js, &l); err != nil {
			return nil, Errors{{Origin: o, Ref: ref, Field: "items", Detail: err.Error()}}
		}
		var objs []Object
		var errs Errors
		for i, it := range l.Items {
			got, es := decodeDoc(o, it)
			for _, e := range es {
				e.Field = strings.TrimPrefix(fmt.Sprintf("items[%d].%s", i, e.Field), ".")
			}
			objs = append(objs, got...)
			errs = append(errs, es...)
		}
		return objs, errs
	}
	want, ok := kinds[tm.Kind]
	if !ok {
		return nil, Errors{{Origin: o, Ref: ref, Field: "kind", Detail: fmt.Sprintf("unknown kind %q (apiVersion %s); klab supports %s", tm.Kind, tm.APIVersion, strings.Join(Kinds(), ", "))}}
	}
	if tm.APIVersion != want {
		return nil, Errors{{Origin: o, Ref: ref, Field: "apiVersion", Detail: fmt.Sprintf("%s %s is not served; use apiVersion %s", tm.APIVersion, tm.Kind, want)}}
	}
	var obj metav1.Object
	switch tm.Kind {
	case "Namespace":
		obj = &corev1.Namespace{}
	case "Pod":
		obj = &corev1.Pod{}
	case "Service":
		obj = &corev1.Service{}
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	}
	if err := strictJSON(js, obj); err != nil {
		return nil, Errors{{Origin: o, Ref: ref, Detail: err.Error()}}
	}
	return []Object{{Origin: o, Obj: obj}}, nil
}

// strictJSON decodes js into v the way the API server's strict field
// validation does (sigs.k8s.io/json): case-sensitive keys, unknown and
// duplicate fields refused, named by their path.
func strictJSON(js []byte, v any) error {
	strict, err := sigsjson.UnmarshalStrict(js, v, sigsjson.DisallowUnknownFields)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = strings.TrimPrefix(e.Error(), "json: ")
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}
