package labs

import (
	"regexp"
	"strings"
)

// iptables writers (and, with the legacy backend, readers) take the
// xtables lock; without -w/--wait a command fails at once, instead of
// waiting, when another one holds it — for example a second lab being
// built at the same time. Every iptables command in a lab must wait.
var xtablesTool = regexp.MustCompile(`^ip6?tables(-nft|-legacy)?(-restore)?$`)

// xtablesNoWait returns the iptables tool a command runs without -w or
// --wait, or "". It looks at every word, including those of a script given
// to sh -c, up to the next shell separator.
func xtablesNoWait(args []string) string {
	if len(args) > 0 && args[0] == "proxy-mode" {
		return "" // 'klab proxy-mode set iptables' names kube-proxy's mode
	}
	var words []string
	for _, a := range args {
		words = append(words, strings.FieldsFunc(a, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '"' || r == '\'' })...)
	}
	for i, w := range words {
		tool := w[strings.LastIndexByte(w, '/')+1:]
		if !xtablesTool.MatchString(tool) {
			continue
		}
		waits, info := false, false
		for _, f := range words[i+1:] {
			if f == ";" || f == "&&" || f == "||" || f == "|" || strings.HasSuffix(f, ";") {
				break
			}
			switch {
			case f == "-w" || f == "--wait" || strings.HasPrefix(f, "--wait=") || (strings.HasPrefix(f, "-w") && !strings.HasPrefix(f, "--")):
				waits = true
			case f == "--version" || f == "-V" || f == "-h" || f == "--help":
				info = true
			}
		}
		if !waits && !info {
			return tool
		}
	}
	return ""
}
