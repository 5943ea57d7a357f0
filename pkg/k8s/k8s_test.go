package k8s

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var nodes = []string{"node1", "node2"}

func TestParseWeb(t *testing.T) {
	set, err := Parse("testdata/web.yaml", Options{Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(set.Namespaces); got != 1 || set.Namespaces[0].Labels[corev1.LabelMetadataName] != "shop" || set.Namespaces[0].Labels["team"] != "blue" {
		t.Errorf("namespace labels: %v", set.Namespaces[0].Labels)
	}
	if len(set.Deployments) != 1 || len(set.Services) != 4 || len(set.NetworkPolicies) != 1 {
		t.Fatalf("kinds: %d deployments %d services %d policies", len(set.Deployments), len(set.Services), len(set.NetworkPolicies))
	}
	if len(set.Pods) != 4 {
		t.Fatalf("pods: %d, want client + 3 replicas", len(set.Pods))
	}
	client := set.Pods[0]
	if client.Namespace != "default" || client.Spec.NodeName != "node2" || client.Spec.Containers[0].Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("client: ns %q node %q", client.Namespace, client.Spec.NodeName)
	}
	hash := PodTemplateHash(&set.Deployments[0].Spec.Template, nil)
	perNode := map[string]int{}
	names := map[string]bool{}
	for _, p := range set.Pods[1:] {
		prefix := "web-" + hash + "-"
		if !strings.HasPrefix(p.Name, prefix) || len(p.Name) != len(prefix)+5 {
			t.Errorf("replica name %q, want %s<5 chars>", p.Name, prefix)
		}
		for _, c := range strings.TrimPrefix(p.Name, prefix) {
			if !strings.ContainsRune(alphanums, c) {
				t.Errorf("replica %q: %q not in the API server's alphabet", p.Name, c)
			}
		}
		if p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] != hash || p.Labels["app"] != "web" || p.Namespace != "shop" {
			t.Errorf("replica %s labels %v", p.Name, p.Labels)
		}
		names[p.Name] = true
		perNode[p.Spec.NodeName]++
		if o := set.Origins[Ref{"Pod", "shop", p.Name}]; o.Doc != 2 {
			t.Errorf("replica origin %v", o)
		}
	}
	if len(names) != 3 {
		t.Errorf("replica names not unique: %v", names)
	}
	// client is on node2, so replicas go node1, node1?, no: least first:
	// node1 (0) , then node1 (1) vs node2 (1) tie -> node1, then node2.
	if perNode["node1"] != 2 || perNode["node2"] != 1 {
		t.Errorf("spread %v, want node1:2 node2:1 (client already on node2)", perNode)
	}
	svc := set.Services[0]
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds == nil || svc.Spec.Ports[1].TargetPort.IntVal != 53 {
		t.Errorf("service defaults: %+v", svc.Spec)
	}
	if np := set.NetworkPolicies[0]; len(np.Spec.PolicyTypes) != 2 || *np.Spec.Ingress[0].Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("policy defaults: %v", np.Spec.PolicyTypes)
	}
	// Same manifest, same names.
	again, err := Parse("testdata/web.yaml", Options{Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	for i := range set.Pods {
		if set.Pods[i].Name != again.Pods[i].Name || set.Pods[i].Spec.NodeName != again.Pods[i].Spec.NodeName {
			t.Errorf("not deterministic: %s@%s vs %s@%s", set.Pods[i].Name, set.Pods[i].Spec.NodeName, again.Pods[i].Name, again.Pods[i].Spec.NodeName)
		}
	}
}

func TestPodTemplateHash(t *testing.T) {
	tpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}}}
	h := PodTemplateHash(&tpl, nil)
	if h != PodTemplateHash(tpl.DeepCopy(), nil) {
		t.Error("hash depends on the pointer, not the value")
	}
	one := int32(1)
	if h == PodTemplateHash(&tpl, &one) {
		t.Error("collision count does not change the hash")
	}
	tpl.Spec.Containers[0].Image = "nginx:2"
	if h == PodTemplateHash(&tpl, nil) {
		t.Error("template change does not change the hash")
	}
	for _, c := range h {
		if !strings.ContainsRune(alphanums, c) {
			t.Errorf("%q: not SafeEncodeString output", h)
		}
	}
	if len(h) < 1 || len(h) > 10 {
		t.Errorf("%q: a uint32 has 1-10 decimal digits", h)
	}
}

func TestGeneratedNameTruncates(t *testing.T) {
	base := strings.Repeat("a", 70) + "-"
	if got := generatedName(base, "bcdfg"); len(got) != 63 {
		t.Errorf("len %d, want 63", len(got))
	}
}

func TestSchedule(t *testing.T) {
	mk := func(name, node string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{NodeName: node}}
	}
	pods := []*corev1.Pod{mk("a", ""), mk("b", ""), mk("c", "n3"), mk("d", ""), mk("e", "")}
	if err := Schedule(pods, []string{"n3", "n1", "n2"}, map[string]int{"n1": 1}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range pods {
		got = append(got, p.Name+"@"+p.Spec.NodeName)
	}
	// start n1:1 n2:0 n3:1 -> a@n2, b@n1 (tie n1,n2? n1:1 n2:1 n3:1 -> n1), d@n2, e@n3
	want := "a@n2 b@n1 c@n3 d@n2 e@n3"
	if strings.Join(got, " ") != want {
		t.Errorf("got %s, want %s", strings.Join(got, " "), want)
	}
	if err := Schedule([]*corev1.Pod{mk("x", "")}, nil, nil); err == nil {
		t.Error("no nodes: want an error")
	}
}

// validate parses doc as one file called name.yaml and validates it.
func validate(t *testing.T, doc string, opts Options) error {
	t.Helper()
	objs, err := Decode("web.yaml", strings.NewReader(doc))
	if err != nil {
		return err
	}
	if opts.Nodes == nil {
		opts.Nodes = nodes
	}
	_, err = Validate(objs, opts)
	return err
}

const svc2 = `apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 70000}]
`

func TestValidationErrors(t *testing.T) {
	existing := &Set{Namespaces: DefaultNamespaces(), Pods: []*corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "old", Namespace: "default"}, Spec: corev1.PodSpec{NodeName: "node1"}}}}
	pod := func(meta, spec string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: " + meta + "\nspec:\n" + spec
	}
	ctr := "  containers: [{name: c, image: x}]\n"
	np := func(spec string) string {
		return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n" + spec
	}
	tests := []struct {
		name string
		doc  string
		opts Options
		want []string // every line must appear; "" = valid
	}{
		{"port out of range", svc2, Options{}, []string{"web.yaml: document 2 (Service default/web): spec.ports[0].port: 70000 is out of range 1-65535"}},
		{"unknown kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", Options{}, []string{`web.yaml: document 1 (ConfigMap x): kind: unknown kind "ConfigMap" (apiVersion v1); klab supports apps/v1 Deployment`}},
		{"unknown apiVersion", "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x}\n", Options{}, []string{"web.yaml: document 1 (Deployment x): apiVersion: extensions/v1beta1 Deployment is not served; use apiVersion apps/v1"}},
		{"missing kind", "apiVersion: v1\nmetadata: {name: x}\n", Options{}, []string{"web.yaml: document 1: kind: required"}},
		{"unknown field", pod("{name: a}", ctr+"  nodeNmae: node1\n"), Options{}, []string{`web.yaml: document 1 (Pod a): unknown field "spec.nodeNmae"`}},
		{"bad selector operator", np("  podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [a]}]\n"), Options{},
			[]string{`web.yaml: document 1 (NetworkPolicy default/p): spec.podSelector.matchExpressions[0].operator: Invalid value: "Equals": not a valid selector operator`}},
		{"In without values", np("  podSelector:\n    matchExpressions: [{key: app, operator: In}]\n"), Options{},
			[]string{"spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"}},
		{"Exists with values", np("  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: team, operator: Exists, values: [x]}]\n"), Options{},
			[]string{"spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"}},
		{"bad label value", pod("{name: a, labels: {app: 'no spaces'}}", ctr), Options{}, []string{"(Pod default/a): metadata.labels: Invalid value: \"no spaces\""}},
		{"missing namespace", pod("{name: a, namespace: nowhere}", ctr), Options{}, []string{`web.yaml: document 1 (Pod nowhere/a): metadata.namespace: namespace "nowhere" does not exist and this apply does not create it`}},
		{"namespace created later in the apply", pod("{name: a, namespace: later}", ctr) + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: later}\n", Options{}, nil},
		{"duplicate in apply", pod("{name: a}", ctr) + "---\n" + pod("{name: a, namespace: default}", ctr), Options{}, []string{"web.yaml: document 2 (Pod default/a): metadata.name: Pod default/a is already defined by web.yaml: document 1"}},
		{"same name other namespace", pod("{name: a}", ctr) + "---\n" + pod("{name: a, namespace: kube-system}", ctr), Options{}, nil},
		{"duplicate against existing (create)", pod("{name: old}", ctr), Options{Existing: existing, Create: true}, []string{"(Pod default/old): metadata.name: Pod default/old already exists"}},
		{"existing is an update (apply)", pod("{name: old}", ctr), Options{Existing: existing}, nil},
		{"invalid pod name", pod("{name: Web_1}", ctr), Options{}, []string{`metadata.name: "Web_1": a lowercase RFC 1123 subdomain must consist of`}},
		{"invalid namespace name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: my.ns}\n", Options{}, []string{`(Namespace my.ns): metadata.name: "my.ns": must not contain dots`}},
		{"invalid service name", "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n", Options{}, []string{`metadata.name: "1web": a DNS-1035 label`}},
		{"unknown node", pod("{name: a}", ctr+"  nodeName: node9\n"), Options{}, []string{`spec.nodeName: no node "node9" in this lab (nodes: node1, node2)`}},
		{"container port out of range", pod("{name: a}", "  containers: [{name: c, ports: [{containerPort: 0}]}]\n"), Options{}, []string{"spec.containers[0].ports[0].containerPort: 0 is out of range 1-65535"}},
		{"bad port name", pod("{name: a}", "  containers: [{name: c, ports: [{name: HTTP_PORT, containerPort: 80}]}]\n"), Options{}, []string{`spec.containers[0].ports[0].name: "HTTP_PORT"`}},
		{"exec probe", pod("{name: a}", "  containers: [{name: c, readinessProbe: {exec: {command: [\"true\"]}}}]\n"), Options{}, []string{"spec.containers[0].readinessProbe.exec: exec probes are not supported by klab"}},
		{"named targetPort not declared is fine", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: x}, ports: [{port: 80, targetPort: nosuchport}]}\n", Options{}, nil},
		{"multi-port needs names", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}, {port: 81}]}\n", Options{}, []string{"spec.ports[0].name: required when a service has more than one port"}},
		{"nodePort on ClusterIP", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, nodePort: 30001}]}\n", Options{}, []string{"spec.ports[0].nodePort: may not be used when `type` is 'ClusterIP'"}},
		{"nodePort out of range", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}\n", Options{}, []string{"spec.ports[0].nodePort: 80 is out of the node port range 30000-32767"}},
		{"externalTrafficPolicy on ClusterIP", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {externalTrafficPolicy: Local, ports: [{port: 80}]}\n", Options{}, []string{"spec.externalTrafficPolicy: may only be set when `type` is 'NodePort' or 'LoadBalancer'"}},
		{"LoadBalancer", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n", Options{}, []string{"spec.type: LoadBalancer is not supported by klab"}},
		{"ExternalName without name", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: ExternalName}\n", Options{}, []string{"spec.externalName: required for type ExternalName"}},
		{"policy to a namespace that does not exist yet", np("  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: tomorrow}}\n"), Options{}, nil},
		{"policy port out of range", np("  podSelector: {}\n  ingress:\n  - ports: [{port: 0}]\n"), Options{}, []string{"spec.ingress[0].ports[0].port: 0 is out of range 1-65535"}},
		{"endPort below port", np("  podSelector: {}\n  egress:\n  - ports: [{port: 90, endPort: 80}]\n"), Options{}, []string{"spec.egress[0].ports[0].endPort: 80 must be greater than or equal to `port` (90)"}},
		{"endPort with named port", np("  podSelector: {}\n  egress:\n  - ports: [{port: http, endPort: 80}]\n"), Options{}, []string{"spec.egress[0].ports[0].endPort: may not be specified when `port` is non-numeric"}},
		{"endPort without port", np("  podSelector: {}\n  egress:\n  - ports: [{endPort: 80}]\n"), Options{}, []string{"endPort: may not be specified when `port` is not specified"}},
		{"bad protocol", np("  podSelector: {}\n  egress:\n  - ports: [{protocol: ICMP}]\n"), Options{}, []string{`spec.egress[0].ports[0].protocol: "ICMP" is not a protocol`}},
		{"empty peer", np("  podSelector: {}\n  ingress:\n  - from: [{}]\n"), Options{}, []string{"spec.ingress[0].from[0]: must specify a peer"}},
		{"ipBlock with selector", np("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n"), Options{}, []string{"spec.ingress[0].from[0]: may not specify both ipBlock and another peer"}},
		{"bad cidr", np("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n"), Options{}, []string{`spec.ingress[0].from[0].ipBlock.cidr: "10.0.0.0/33" is not a valid CIDR`}},
		{"except outside cidr", np("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16, 10.0.0.0/8]}}]\n"), Options{}, []string{
			`spec.ingress[0].from[0].ipBlock.except[0]: "11.0.0.0/16" must be a strict subset of`, `except[1]: "10.0.0.0/8" must be a strict subset`}},
		{"bad policyType", np("  podSelector: {}\n  policyTypes: [Ingress, Sideways]\n"), Options{}, []string{`spec.policyTypes[1]: "Sideways" is not a policy type`}},
		{"deployment selector mismatch", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c}]}\n", Options{},
			[]string{"spec.template.metadata.labels: app=b: `selector` does not match template `labels`"}},
		{"several errors, all reported", svc2 + "---\n" + pod("{name: a, namespace: nowhere}", ctr), Options{}, []string{"document 2 (Service default/web): spec.ports[0].port", "document 3 (Pod nowhere/a): metadata.namespace"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, tc.doc, tc.opts)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("want valid, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, w)
				}
			}
		})
	}
}

func TestAllOrNothing(t *testing.T) {
	objs, err := Decode("web.yaml", strings.NewReader(svc2))
	if err != nil {
		t.Fatal(err)
	}
	set, err := Validate(objs, Options{Nodes: nodes})
	if set != nil || err == nil {
		t.Fatalf("an invalid document must fail the whole apply: set=%v err=%v", set, err)
	}
	var es Errors
	if e, ok := err.(Errors); ok {
		es = e
	}
	if len(es) != 1 || es[0].Origin.Doc != 2 || es[0].Field != "spec.ports[0].port" {
		t.Errorf("errors: %#v", es)
	}
}

func TestReadDirStdinList(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644)
	objs, err := Read(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].Obj.GetName() != "a" || objs[1].Obj.GetName() != "b" || objs[0].Origin.File != filepath.Join(dir, "a.json") {
		t.Fatalf("dir: %+v", objs)
	}
	list := `{"apiVersion":"v1","kind":"List","items":[
	  {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}},
	  {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"x"},"spec":{"containers":[{"name":"c","ports":[{"containerPort":99999}]}]}}]}`
	objs, err = Read("-", strings.NewReader("---\n# leading separator and comment\n---\n"+list))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Validate(objs, Options{Nodes: nodes})
	if err == nil || !strings.Contains(err.Error(), "-: document 1 (Pod x/a): spec.containers[0].ports[0].containerPort: 99999 is out of range") {
		t.Errorf("list from stdin: %v", err)
	}
	_, err = Read("-", strings.NewReader("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: eighty}]}]}\n"))
	if err == nil || !strings.Contains(err.Error(), "-: document 1 (Pod a): cannot unmarshal string") {
		t.Errorf("type error: %v", err)
	}
}

func TestNamespaceLabelOverridden(t *testing.T) {
	objs, _ := Decode("ns.yaml", strings.NewReader("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {kubernetes.io/metadata.name: lies, ns: x}}\n"))
	set, err := Validate(objs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if l := set.Namespaces[0].Labels; l[corev1.LabelMetadataName] != "x" || l["ns"] != "x" {
		t.Errorf("labels %v", l)
	}
}

func TestReapplyKeepsNode(t *testing.T) {
	existing := &Set{Namespaces: DefaultNamespaces(), Pods: []*corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "default"}, Spec: corev1.PodSpec{NodeName: "node2"}}}}
	objs, _ := Decode("a.yaml", strings.NewReader("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n"))
	set, err := Validate(objs, Options{Existing: existing, Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	if set.Pods[0].Spec.NodeName != "node2" {
		t.Errorf("re-applied pod moved to %s", set.Pods[0].Spec.NodeName)
	}
	_ = networkingv1.PolicyTypeIngress
}
