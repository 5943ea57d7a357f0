package nft

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/klab-dev/klab/pkg/nat"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/netns"
)

// testNS creates a throwaway node namespace of a test lab (removed with the
// lab), or skips when not root.
func testNS(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nf_tables)")
	}
	name := netns.Name(testutil.LabName(t, "nft"), "n1")
	if _, err := netns.Ensure(name); err != nil {
		t.Fatal(err)
	}
	return name
}

// needNft skips when the nft binary (the independent reader) is missing.
func needNft(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (apt-get install nftables): the read-back needs it; ApplyChange itself does not")
	}
}

func nftOut(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// kernelTable is what `nft -j list table ip kube-proxy` says: chains (with
// hook, priority and their rules' handles and comments), sets and maps
// (type, flags, timeout, element count).
type kernelTable struct {
	chains map[string]kernelChain
	sets   map[string]kernelSet
}

type kernelChain struct {
	typ, hook string
	prio      int
	handles   []int
	comments  []string
}

type kernelSet struct {
	typ     string
	isMap   bool
	flags   []string
	timeout int
	elems   int
}

func readKernel(t testing.TB, ns string) kernelTable {
	t.Helper()
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(nftOut(t, ns, "-j", "list", "table", "ip", "kube-proxy")), &doc); err != nil {
		t.Fatal(err)
	}
	k := kernelTable{chains: map[string]kernelChain{}, sets: map[string]kernelSet{}}
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			switch kind {
			case "chain":
				var c struct {
					Name, Type, Hook string
					Prio             int
				}
				json.Unmarshal(raw, &c)
				kc := k.chains[c.Name]
				kc.typ, kc.hook, kc.prio = c.Type, c.Hook, c.Prio
				k.chains[c.Name] = kc
			case "rule":
				var r struct {
					Chain, Comment string
					Handle         int
				}
				json.Unmarshal(raw, &r)
				kc := k.chains[r.Chain]
				kc.handles = append(kc.handles, r.Handle)
				kc.comments = append(kc.comments, r.Comment)
				k.chains[r.Chain] = kc
			case "set", "map":
				var s struct {
					Name    string
					Type    json.RawMessage
					Flags   []string
					Timeout int
					Elem    []json.RawMessage
				}
				json.Unmarshal(raw, &s)
				var typ string
				var parts []string
				if json.Unmarshal(s.Type, &typ) != nil {
					json.Unmarshal(s.Type, &parts)
					typ = strings.Join(parts, " . ")
				}
				if kind == "map" {
					typ += " : verdict"
				}
				slices.Sort(s.Flags)
				k.sets[s.Name] = kernelSet{typ: typ, isMap: kind == "map", flags: s.Flags, timeout: s.Timeout, elems: len(s.Elem)}
			}
		}
	}
	return k
}

// listedRules parses `nft list table` (the text form) into each chain's
// rule lines, and normalizes what nft prints differently from kube-proxy's
// input syntax (mark arithmetic, vmap separators).
func listedRules(t testing.TB, ns string) map[string][]string {
	out := map[string][]string{}
	var cur string
	for _, l := range strings.Split(nftOut(t, ns, "list", "table", "ip", "kube-proxy"), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "chain ") && strings.HasSuffix(l, " {"):
			cur = strings.TrimSuffix(strings.TrimPrefix(l, "chain "), " {")
			out[cur] = nil
		case l == "}":
			cur = ""
		case cur != "" && l != "" && !strings.HasPrefix(l, "type "):
			out[cur] = append(out[cur], numgenKeys.ReplaceAllStringFunc(l, hostKey))
		}
	}
	return out
}

// numgenKeys: google/nftables v0.3 tags every anonymous set's keys as
// big-endian (NFTNL_UDATA_SET_KEYBYTEORDER 2), so nft prints the numgen
// vmap's host-endian keys 0, 1, 2 as 0, 16777216, 33554432 on a
// little-endian machine. The kernel matches the bytes, which are the ones nft
// itself sends; only the display differs. Undo it for the comparison.
var numgenKeys = regexp.MustCompile(`\b[0-9]+ : goto `)

func hostKey(m string) string {
	n, _ := strconv.ParseUint(strings.Fields(m)[0], 10, 32)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(n))
	return strconv.FormatUint(uint64(binary.NativeEndian.Uint32(b[:])), 10) + " : goto "
}

var nftPrints = strings.NewReplacer(
	"mark set mark or ", "meta mark set meta mark | ",
	"mark set mark xor ", "meta mark set meta mark ^ ",
	" == 0 ", " == 0x00000000 ",
	"mark and ", "meta mark & ",
	" , ", ", ",
)

// compareKernel checks the namespace's table against a rendering: every
// chain (hook, type, priority), every rule (as nft prints it, comments
// included), every set and map (type, flags, timeout, number of elements),
// and nothing else.
func compareKernel(t testing.TB, ns string, tab *Table) kernelTable {
	t.Helper()
	k := readKernel(t, ns)
	rules := listedRules(t, ns)
	if len(k.chains) != len(tab.Chains) {
		t.Errorf("kernel has %d chains, rendering %d", len(k.chains), len(tab.Chains))
	}
	for _, c := range tab.Chains {
		kc, ok := k.chains[c.Name]
		if !ok {
			t.Errorf("chain %s missing in the kernel", c.Name)
			continue
		}
		if kc.hook != c.Hook || (c.Hook != "" && (kc.typ != c.Type || kc.prio != c.Priority)) {
			t.Errorf("chain %s: kernel %s/%s/%d, rendered %s/%s/%d", c.Name, kc.typ, kc.hook, kc.prio, c.Type, c.Hook, c.Priority)
		}
		var want []string
		for _, r := range c.Rules {
			want = append(want, nftPrints.Replace(r.Text()))
		}
		if !slices.Equal(rules[c.Name], want) {
			t.Errorf("chain %s rules:\nkernel   %q\nrendered %q", c.Name, rules[c.Name], want)
		}
	}
	if len(k.sets) != len(tab.Sets) {
		t.Errorf("kernel has %d sets and maps, rendering %d", len(k.sets), len(tab.Sets))
	}
	for _, s := range tab.Sets {
		ks, ok := k.sets[s.Name]
		// nft 1.0.6's JSON leaves out the "dynamic" flag (its text shows
		// "flags dynamic,timeout", checked in TestApplyReadBack).
		flags := slices.DeleteFunc(slices.Sorted(slices.Values(s.Flags)), func(f string) bool { return f == "dynamic" })
		switch {
		case !ok:
			t.Errorf("set %s missing in the kernel", s.Name)
		case ks.typ != s.Type || ks.isMap != s.IsMap || !slices.Equal(ks.flags, flags) || ks.timeout != s.Timeout || ks.elems != len(s.Elements):
			t.Errorf("set %s: kernel %+v, rendered type %q flags %v timeout %d, %d elements", s.Name, ks, s.Type, flags, s.Timeout, len(s.Elements))
		}
	}
	return k
}

// TestApplyReadBack applies upstream's test services to a fresh namespace
// and reads the kernel back with nft.
func TestApplyReadBack(t *testing.T) {
	ns := testNS(t)
	needNft(t)
	tab, err := Render(upstreamConfig, upstreamServices(), NodePortAddresses(netip.MustParseAddr("192.168.0.2")))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := Apply(ns, nil, tab)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Full == nil {
		t.Error("first Apply was not a full sync")
	}
	compareKernel(t, ns, tab)
	// Elements, with their values and comments, as nft prints them.
	listing := nftOut(t, ns, "list", "table", "ip", "kube-proxy")
	for _, want := range []string{
		`172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain`,
		`tcp . 30003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80`,
		`172.30.0.45 . tcp . 80 : goto service-HVFWP5L3-ns5/svc5/tcp/p80`,
		`elements = { 192.168.0.2 }`,
		"flags dynamic,timeout\n\t\ttimeout 3h",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("nft list lacks %q", want)
		}
	}
	// Applying the same rendering again changes nothing.
	if ch, err := Apply(ns, tab, tab); err != nil || !ch.Empty() {
		t.Errorf("re-apply: %v, change %q", err, ch.Text())
	}
}

// TestApplyOneServiceChange changes one service's endpoints, adds one
// service and removes another, and checks that only their chains and
// elements changed in the kernel: every other chain keeps its rules'
// handles (it was not flushed).
func TestApplyOneServiceChange(t *testing.T) {
	ns := testNS(t)
	needNft(t)
	opt := NodePortAddresses(netip.MustParseAddr("192.168.0.2"))
	svcs := upstreamServices()
	prev, err := Render(upstreamConfig, svcs, opt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ns, nil, prev); err != nil {
		t.Fatal(err)
	}
	before := readKernel(t, ns)

	svcs[2].Endpoints = []nat.Endpoint{ep("10.180.0.4"), ep("10.180.0.6")} // ns4/svc4: .5 -> .6
	svcs = slices.Delete(svcs, 4, 5)                                       // ns6/svc6 goes
	svcs = append(svcs, nat.Service{Namespace: "ns7", Name: "svc7", ClusterIP: netip.MustParseAddr("172.30.0.47"),
		Ports: []nat.ServicePort{{Name: "dns", Protocol: nat.UDP, Port: 53}}, Endpoints: []nat.Endpoint{ep("10.180.0.7")}})
	next, err := Render(upstreamConfig, svcs, opt)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := Apply(ns, prev, next)
	if err != nil {
		t.Fatalf("%v\n%s", err, ch.Text())
	}
	t.Logf("change:\n%s", ch.Text())
	names := func(cs []*Chain) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return
	}
	svc4 := "LAUZTJTB-ns4/svc4/tcp/p80"
	ep6 := EndpointPrefix + EndpointChainBase("ns4", "svc4", nat.TCP, "p80", netip.MustParseAddrPort("10.180.0.6:80"))
	b7 := PortChainBase("ns7", "svc7", nat.UDP, "dns")
	ep7 := EndpointPrefix + EndpointChainBase("ns7", "svc7", nat.UDP, "dns", netip.MustParseAddrPort("10.180.0.7:53"))
	if got, want := names(ch.RewriteChains), []string{ServicePrefix + svc4}; !slices.Equal(got, want) {
		t.Errorf("rewritten chains %v, want %v", got, want)
	}
	if got, want := names(ch.AddChains), []string{ep6, ServicePrefix + b7, ep7}; !slices.Equal(got, want) {
		t.Errorf("added chains %v, want %v", got, want)
	}
	if got, want := ch.DelChains, []string{"endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"}; !slices.Equal(got, want) {
		t.Errorf("deleted chains %v, want %v", got, want)
	}
	var elems []string
	for _, se := range ch.AddElements {
		for _, e := range se.Elements {
			elems = append(elems, "+"+se.Set.Name+" "+strings.Join(e.Key, " . "))
		}
	}
	for _, se := range ch.DelElements {
		for _, e := range se.Elements {
			elems = append(elems, "-"+se.Set.Name+" "+strings.Join(e.Key, " . "))
		}
	}
	slices.Sort(elems)
	want := []string{"+cluster-ips 172.30.0.47", "+service-ips 172.30.0.47 . udp . 53", "-cluster-ips 172.30.0.46", "-no-endpoint-services 172.30.0.46 . tcp . 80"}
	if !slices.Equal(elems, want) {
		t.Errorf("element changes %v, want %v", elems, want)
	}
	after := compareKernel(t, ns, next)
	touched := map[string]bool{ServicePrefix + svc4: true, ep6: true, ServicePrefix + b7: true, ep7: true}
	for name, kc := range after.chains {
		if touched[name] {
			continue
		}
		if old, ok := before.chains[name]; !ok || !slices.Equal(old.handles, kc.handles) {
			t.Errorf("chain %s was rewritten (rule handles %v -> %v)", name, old.handles, kc.handles)
		}
	}
	if testing.Verbose() {
		fmt.Println(len(after.chains), "chains in the kernel")
	}
}
