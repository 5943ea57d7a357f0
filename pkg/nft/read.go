package nft

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/google/nftables"

	"github.com/klab-dev/klab/pkg/netns"
)

// Summary is a table's shape: rules per chain and elements per set or map.
// Comparing the kernel's summary with a rendering's finds what an
// interrupted change left (a chain flushed but not refilled, elements
// missing) without decoding every expression back into statements.
type Summary map[string]int // "chain NAME" or "set NAME" -> count

// Summarize is the rendering's summary.
func (t *Table) Summarize() Summary {
	s := Summary{}
	for _, c := range t.Chains {
		s["chain "+c.Name] = len(c.Rules)
	}
	for _, set := range t.Sets {
		s["set "+set.Name] = len(set.Elements)
	}
	return s
}

// ReadSummary reads the summary of table ip NAME in the named namespace
// over netlink (no nft binary); nil, nil when the table does not exist.
// Dynamic sets (affinity) are counted as empty: their elements are the
// kernel's, added by packets.
func ReadSummary(nsName, table string) (Summary, error) {
	h, err := netns.Open(nsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)), nftables.WithSockOptions(bigSendBuffer))
	if err != nil {
		return nil, fmt.Errorf("nftables in namespace %s: %w", nsName, err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables in namespace %s: %w", nsName, err)
	}
	var t *nftables.Table
	for _, x := range tables {
		if x.Name == table {
			t = x
		}
	}
	if t == nil {
		return nil, nil
	}
	s := Summary{}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, err
	}
	for _, c := range chains {
		if c.Table.Name != table {
			continue
		}
		rules, err := conn.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("read chain %s of table ip %s in namespace %s: %w", c.Name, table, nsName, err)
		}
		s["chain "+c.Name] = len(rules)
	}
	sets, err := conn.GetSets(t)
	if err != nil {
		return nil, err
	}
	for _, set := range sets {
		if set.Anonymous {
			continue // a rule's own inline set or vmap, like { 10.96.0.0/12 }
		}
		n := 0
		if !set.Dynamic {
			els, err := conn.GetSetElements(set)
			if err != nil {
				return nil, err
			}
			n = len(els)
		}
		s["set "+set.Name] = n
	}
	return s, nil
}

// TableExists reports whether table ip NAME exists in the namespace.
func TableExists(nsName, table string) (bool, error) {
	s, err := ReadSummary(nsName, table)
	return s != nil, err
}

// Drift lists how have differs from want, one sentence per object, sorted;
// nil when they match. Dynamic sets are not compared by count.
func Drift(want, have Summary, dynamic func(set string) bool) []string {
	var out []string
	for k, w := range want {
		h, ok := have[k]
		switch {
		case !ok:
			out = append(out, k+" missing")
		case h != w && !(dynamic != nil && len(k) > 4 && k[:4] == "set " && dynamic(k[4:])):
			unit := " rules"
			if k[:4] == "set " {
				unit = " elements"
			}
			out = append(out, k+" has "+strconv.Itoa(h)+unit+", not "+strconv.Itoa(w))
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			out = append(out, k+" is not the lab's")
		}
	}
	sort.Strings(out)
	return out
}
