package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/k8s"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func newNamespaceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "namespace",
		Aliases: []string{"ns"},
		Short:   "Add, delete and list Kubernetes namespaces (pods and services live in one)",
	}
	var labels []string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a Kubernetes namespace (labelled kubernetes.io/metadata.name=NAME, as the API server does)",
		Long: `Add a Kubernetes namespace. It is API state, not a kernel object: its pods get
network namespaces of their own, named klab.<lab>.<namespace>.<pod>. Name a pod
of it NAMESPACE/NAME anywhere klab takes a pod (klab pod add other/client).`,
		Example: "  klab namespace add other -l team=blue\n  klab pod add other/client --node node1",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ls, err := cluster.ParseLabels(labels)
			if err != nil {
				return err
			}
			c, err := openLab(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.AddNamespace(args[0], ls); err != nil {
				return err
			}
			fmt.Fprintf(out(), "namespace/%s created\n", args[0])
			return finish(c.A)
		},
	}
	add.Flags().StringSliceVarP(&labels, "label", "l", nil, "label key=value (repeatable), for namespaceSelectors")
	del := &cobra.Command{
		Use:     "del NAME...",
		Aliases: []string{"delete", "rm"},
		Short:   "Delete namespaces with their pods and services",
		Args:    minArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return deleteEach("namespace", args, func(c *cluster.Cluster, name string) bool { return c.Lab.Namespace(name) != nil }, (*cluster.Cluster).DelNamespace)
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the lab's namespaces",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return getObjects("namespaces", "", false, "")
		},
	}
	cmd.AddCommand(add, del, list)
	return cmd
}

// manifestFiles is the -f of apply and delete.
func manifestFiles(cmd *cobra.Command, files *[]string) {
	cmd.Flags().StringArrayVarP(files, "filename", "f", nil, "a manifest file, a directory of them, or - for standard input (repeatable)")
}

// readManifests reads and validates every -f, all or nothing.
func readManifests(c *cluster.Cluster, files []string, forDelete bool) (*k8s.Set, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("no manifest given: add -f FILE (a file, a directory or - for standard input)")
	}
	var objs []k8s.Object
	for _, f := range files {
		// In a lab, a relative path names a file beside the lab file
		// ($KLAB_LAB_DIR, set by 'klab run').
		if dir := os.Getenv("KLAB_LAB_DIR"); dir != "" && f != "-" && !filepath.IsAbs(f) {
			if _, err := os.Stat(f); err != nil {
				f = filepath.Join(dir, f)
			}
		}
		o, err := k8s.Read(f, os.Stdin)
		if err != nil {
			return nil, err
		}
		objs = append(objs, o...)
	}
	opts := k8s.Options{Existing: c.Lab.Existing(), Nodes: c.Lab.NodeNames()}
	if forDelete {
		opts.Nodes = nil // deleting schedules nothing
	}
	return k8s.Validate(objs, opts)
}

// manifestVerb is the body of apply and delete: read and validate every
// manifest, then do, printing kubectl's one line per object.
func manifestVerb(files []string, forDelete bool, do func(*cluster.Cluster, *k8s.Set) (*cluster.ApplyResult, error)) error {
	c, err := openLab(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	set, err := readManifests(c, files, forDelete)
	if err != nil {
		return err
	}
	defer guardBuild(c)()
	var endBar func()
	c.Progress, endBar = progressBar("klab: building")
	res, err := do(c, set)
	endBar()
	if err != nil {
		failed(c.A)
		return err
	}
	if err := finish(c.A); err != nil {
		return err
	}
	for _, l := range res.Lines {
		fmt.Fprintln(out(), l)
	}
	return nil
}

func newApplyCmd() *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR|-",
		Short: "Create or update Kubernetes objects from manifests: Namespace, Pod, Deployment, Service, NetworkPolicy",
		Long: `Apply real Kubernetes YAML or JSON (several documents per file, a directory,
or standard input). Every document is validated first — unknown kinds, bad
selectors, ports out of range, missing namespaces, duplicate names are each
reported with file, document number and field — and nothing of the whole apply
is changed when one is wrong. Pods without spec.nodeName are scheduled on the
node with the fewest pods; a Deployment's replicas are named the way the
ReplicaSet controller names them. Every pod runs klab's echo server on each
declared containerPort (TCP: HTTP answering with the pod's name; UDP: an echo).`,
		Example: `  klab apply -f labs/manifests/web.yaml
  kubectl create deployment web --image=nginx --replicas=3 --dry-run=client -o yaml | klab apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return manifestVerb(files, false, func(c *cluster.Cluster, set *k8s.Set) (*cluster.ApplyResult, error) { return c.Apply(set, c.Serve) })
		},
	}
	manifestFiles(cmd, &files)
	return cmd
}

func newDeleteCmd() *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:     "delete -f FILE|DIR|-",
		Short:   "Delete the Kubernetes objects manifests name",
		Example: "  klab delete -f labs/manifests/web.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return manifestVerb(files, true, (*cluster.Cluster).DeleteObjects)
		},
	}
	manifestFiles(cmd, &files)
	return cmd
}

// getKinds are the kinds 'klab get' shows, with kubectl's short names.
var getKinds = map[string]string{
	"pods": "pods", "pod": "pods", "po": "pods",
	"services": "services", "service": "services", "svc": "services",
	"endpoints": "endpoints", "ep": "endpoints",
	"namespaces": "namespaces", "namespace": "namespaces", "ns": "namespaces",
	"nodes": "nodes", "node": "nodes", "no": "nodes",
	"networkpolicies": "networkpolicies", "networkpolicy": "networkpolicies", "netpol": "networkpolicies",
}

func newGetCmd() *cobra.Command {
	var namespace string
	var all bool
	cmd := &cobra.Command{
		Use:   "get pods|services|endpoints|networkpolicies|namespaces|nodes [NAME]",
		Short: "List Kubernetes objects with kubectl's columns (-o wide, json, yaml)",
		Long: `List the lab's objects the way kubectl does. -n picks a namespace (default:
default), -A all of them. -o wide adds columns; -o json and -o yaml print a
Kubernetes List of the real object kinds with their status filled in (pods:
status.podIP, spec.nodeName; services: spec.clusterIP, node ports), so jq- and
kubectl-style scripts work on it.`,
		Example: "  klab get pods -A -o wide\n  klab get svc -n other -o json | jq -r '.items[].spec.clusterIP'",
		Args:    cobra.RangeArgs(1, 2),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"pods", "services", "endpoints", "networkpolicies", "namespaces", "nodes"}, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, ok := getKinds[args[0]]
			if !ok {
				return fmt.Errorf("kind %q is not one klab has: use pods, services, endpoints, networkpolicies, namespaces or nodes", args[0])
			}
			if all && cmd.Flags().Changed("namespace") {
				return fmt.Errorf("give either -n NAMESPACE or -A, not both")
			}
			ns := namespace
			if all {
				ns = ""
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return getObjects(kind, ns, all, name)
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", cluster.DefaultNamespace, "the namespace to list")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list every namespace")
	return cmd
}

// getObjects prints one kind, in namespace ns ("" for all when all is set),
// only the object called name when it is not empty.
func getObjects(kind, ns string, all bool, name string) error {
	switch globals.output {
	case "text", "wide", "json", "yaml":
	default:
		return fmt.Errorf("output format %q is not known here: use -o wide, json or yaml", globals.output)
	}
	c, err := openLab(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	l := c.Lab
	if ns != "" && l.Namespace(ns) == nil && kind != "namespaces" && kind != "nodes" {
		return fmt.Errorf("namespace %q does not exist in lab %s: see 'klab get namespaces'", ns, l.Name)
	}
	inNS := func(objNS string) bool { return all || ns == "" || objNS == ns }
	var cur string // the name of the object in hand, for the name filter
	in := func(objNS string) bool { return inNS(objNS) && (name == "" || cur == name) }
	var items []runtime.Object
	var rows [][]string
	wide := globals.output == "wide"
	var header []string
	switch kind {
	case "pods":
		header = []string{"NAME", "READY", "STATUS", "RESTARTS", "AGE"}
		if wide {
			header = append(header, "IP", "NODE")
		}
		for _, p := range l.Pods {
			if cur = p.ShortName(); !in(p.Namespace()) {
				continue
			}
			o := l.PodObject(p)
			items = append(items, &o)
			ready := "1/1"
			if p.Unready {
				ready = "0/1"
			}
			r := []string{p.ShortName(), ready, "Running", "0", age(l)}
			if wide {
				r = append(r, p.IP.String(), p.Node)
			}
			rows = append(rows, withNS(all, p.Namespace(), r))
		}
	case "services":
		header = []string{"NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"}
		if wide {
			header = append(header, "SELECTOR")
		}
		for _, s := range l.Services {
			if cur = s.ShortName(); !in(s.Namespace()) {
				continue
			}
			o := l.ServiceObject(s)
			items = append(items, &o)
			ext := "<none>"
			if s.Type == cluster.ServiceExternalName {
				ext = s.ExternalName
			}
			cip := o.Spec.ClusterIP
			if cip == "" {
				cip = "<none>"
			}
			r := []string{s.ShortName(), string(o.Spec.Type), cip, ext, ports(o.Spec.Ports), age(l)}
			if wide {
				r = append(r, selector(s.Selector))
			}
			rows = append(rows, withNS(all, s.Namespace(), r))
		}
	case "endpoints":
		header = []string{"NAME", "ENDPOINTS", "AGE"}
		for _, s := range l.Services {
			if cur = s.ShortName(); !in(s.Namespace()) {
				continue
			}
			o := l.EndpointsObject(s)
			items = append(items, &o)
			var eps []string
			for _, sub := range o.Subsets {
				for _, a := range sub.Addresses {
					for _, p := range sub.Ports {
						eps = append(eps, fmt.Sprintf("%s:%d", a.IP, p.Port))
					}
				}
			}
			list := "<none>"
			if len(eps) > 0 {
				list = strings.Join(eps, ",")
			}
			rows = append(rows, withNS(all, s.Namespace(), []string{s.ShortName(), list, age(l)}))
		}
	case "networkpolicies":
		header = []string{"NAME", "POD-SELECTOR", "AGE"}
		for _, np := range l.Policies {
			if cur = np.Name; !in(np.Namespace) {
				continue
			}
			o := np.DeepCopy()
			o.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
			items = append(items, o)
			rows = append(rows, withNS(all, np.Namespace, []string{np.Name, metav1.FormatLabelSelector(&np.Spec.PodSelector), age(l)}))
		}
	case "namespaces":
		all = false
		header = []string{"NAME", "STATUS", "AGE"}
		if wide {
			header = append(header, "LABELS")
		}
		for _, n := range l.AllNamespaces() {
			if name != "" && n.Name != name {
				continue
			}
			o := cluster.NamespaceObject(n)
			items = append(items, &o)
			r := []string{n.Name, "Active", age(l)}
			if wide {
				r = append(r, selector(n.Labels))
			}
			rows = append(rows, r)
		}
	case "nodes":
		all = false
		header = []string{"NAME", "STATUS", "ROLES", "AGE", "VERSION"}
		if wide {
			header = append(header, "INTERNAL-IP", "POD-CIDR", "BACKEND", "PROXY-MODE")
		}
		for _, n := range l.Nodes {
			if name != "" && n.Name != name {
				continue
			}
			o := l.NodeObject(n)
			items = append(items, &o)
			r := []string{n.Name, "Ready", "<none>", age(l), "klab"}
			if wide {
				r = append(r, n.IP.String(), n.PodCIDR.String(), l.Backend, l.Mode())
			}
			rows = append(rows, r)
		}
	}
	switch globals.output {
	case "json", "yaml":
		list := &corev1.List{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}}
		for _, it := range items {
			list.Items = append(list.Items, runtime.RawExtension{Object: it})
		}
		if globals.output == "json" {
			return printJSON(list)
		}
		b, err := yaml.Marshal(list)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(b)
		return err
	}
	if len(rows) == 0 && name != "" {
		return fmt.Errorf("%s %q not found in lab %s", strings.TrimSuffix(kind, "s"), name, l.Name)
	}
	if len(rows) == 0 {
		where := "in " + ns + " namespace"
		if all || ns == "" {
			where = ""
		}
		fmt.Fprintf(os.Stderr, "No resources found %s.\n", strings.TrimSpace(where))
		return nil
	}
	if all {
		header = append([]string{"NAMESPACE"}, header...)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

func withNS(all bool, ns string, r []string) []string {
	if all {
		return append([]string{ns}, r...)
	}
	return r
}

// age is how long the lab has existed (klab does not keep each object's
// creation time).
func age(l *cluster.Lab) string {
	d := metav1.Now().Sub(l.Created)
	switch {
	case d.Hours() >= 48:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d.Hours() >= 1:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d.Minutes() >= 1:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}

func ports(ps []corev1.ServicePort) string {
	if len(ps) == 0 {
		return "<none>"
	}
	var out []string
	for _, p := range ps {
		s := strconv.Itoa(int(p.Port))
		if p.NodePort > 0 {
			s += ":" + strconv.Itoa(int(p.NodePort))
		}
		out = append(out, s+"/"+string(p.Protocol))
	}
	return strings.Join(out, ",")
}

func selector(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
