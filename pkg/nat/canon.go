package nat

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Canon returns a rule in a canonical form, so that a rule as klab renders
// it and the same rule as iptables-save prints it back compare equal. The
// kernel does not keep the text klab wrote: iptables-save prints the IP
// header matches first (-s, -d, -i, -o, -p; addresses with their prefix
// length), each match's and the target's options in its own order and with
// its defaults spelled out (recent's --mask 255.255.255.255 --rsource,
// REJECT's --reject-with icmp-port-unreachable), MARK's --or-mark and
// --xor-mark as --set-xmark, and statistic's probability as the value the
// kernel stores (a 31-bit fraction). Canon applies the same rules to both
// sides: the header matches in iptables' order, then each -m block and the
// -j block with their option groups sorted and defaults dropped. rule is
// the tokenized rule without "-A CHAIN".
func Canon(rule []string) string {
	var head [5]string // -s -d -i -o -p
	var rest []string
	for i := 0; i < len(rule); i++ {
		neg := ""
		tok := rule[i]
		if tok == "!" && i+1 < len(rule) {
			neg, tok = "! ", rule[i+1]
			i++
		}
		slot := slices.Index([]string{"-s", "-d", "-i", "-o", "-p"}, tok)
		if slot >= 0 && i+1 < len(rule) {
			v := rule[i+1]
			i++
			if slot < 2 && !strings.Contains(v, "/") {
				v += "/32"
			}
			head[slot] = neg + tok + " " + v
			continue
		}
		if neg != "" {
			rest = append(rest, "!")
		}
		rest = append(rest, tok)
	}
	var out []string
	for _, h := range head {
		if h != "" {
			out = append(out, h)
		}
	}
	// Blocks: "-m NAME opts..." and "-j TARGET opts...".
	for i := 0; i < len(rest); {
		j := i + 2
		for j < len(rest) && rest[j] != "-m" && rest[j] != "-j" && rest[j] != "-g" {
			j++
		}
		if i+1 >= len(rest) {
			out = append(out, rest[i:]...)
			break
		}
		out = append(out, canonBlock(rest[i], rest[i+1], rest[min(i+2, j):j]))
		i = j
	}
	return strings.Join(out, " ")
}

// canonBlock normalizes one match or target block.
func canonBlock(kind, name string, opts []string) string {
	var groups []string
	for i := 0; i < len(opts); {
		j := i + 1
		if opts[i] == "!" {
			j++
		}
		for j < len(opts) && !strings.HasPrefix(opts[j], "--") && opts[j] != "!" {
			j++
		}
		groups = append(groups, strings.Join(opts[i:min(j, len(opts))], " "))
		i = j
	}
	for k, g := range groups {
		switch {
		case name == "MARK" && strings.HasPrefix(g, "--or-mark "):
			v := strings.TrimPrefix(g, "--or-mark ")
			groups[k] = "--set-xmark " + v + "/" + v
		case name == "MARK" && strings.HasPrefix(g, "--xor-mark "):
			groups[k] = "--set-xmark " + strings.TrimPrefix(g, "--xor-mark ") + "/0x0"
		case name == "statistic" && strings.HasPrefix(g, "--probability "):
			if p, err := strconv.ParseFloat(strings.TrimPrefix(g, "--probability "), 64); err == nil {
				// xt_statistic keeps lround(p * 2^31); iptables-save prints
				// it back with 11 decimals.
				groups[k] = fmt.Sprintf("--probability %.11f", math.Round(p*0x80000000)/0x80000000)
			}
		}
	}
	groups = slices.DeleteFunc(groups, func(g string) bool {
		switch name {
		case "recent":
			return g == "--mask 255.255.255.255" || g == "--rsource"
		case "REJECT":
			return g == "--reject-with icmp-port-unreachable"
		}
		return false
	})
	slices.Sort(groups)
	return strings.TrimSpace(kind + " " + name + " " + strings.Join(groups, " "))
}
