package labs

import (
	"fmt"
	"strings"
)

// IndexMarkdown returns docs/labs.md: the index of the given labs, in a
// suggested order (each lab after its prerequisites).
func IndexMarkdown(all []*Lab) string {
	var b strings.Builder
	b.WriteString("# Labs\n\n")
	b.WriteString("<!-- Generated from the labs' front matter by `go test ./labs -run DocsIndex -update`; do not edit. -->\n\n")
	b.WriteString("Each lab is one Markdown file in [`labs/`](../labs): read it on GitHub, or run it with\n")
	b.WriteString("`sudo klab run NAME` (`--step` to pause between steps, `--yes` to run straight through).\n")
	b.WriteString("The format is described in [lab-format.md](lab-format.md).\n\n")
	b.WriteString("| Lab | Time | What you learn | Do first |\n|-----|------|----------------|----------|\n")
	for _, l := range ordered(all) {
		pre := "-"
		if len(l.Prerequisites) > 0 {
			pre = strings.Join(l.Prerequisites, ", ")
		}
		fmt.Fprintf(&b, "| [%s](../labs/%s.md) | %s | **%s.** %s | %s |\n", l.Name, l.Name, fmtDuration(l.Time),
			strings.TrimSuffix(cell(l.Title), "."), cell(l.Summary), pre)
	}
	b.WriteString("\nAfter a lab, it stays up: `sudo klab exec node1 -- ip route`, `sudo klab show node1`,\n")
	b.WriteString("`sudo klab lab check NAME` (run its checks again), and `sudo klab destroy NAME` when done.\n")
	return b.String()
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// ordered sorts labs so that each comes after its prerequisites (stable by
// name otherwise).
func ordered(all []*Lab) []*Lab {
	byName := map[string]*Lab{}
	for _, l := range all {
		byName[l.Name] = l
	}
	var out []*Lab
	done := map[string]bool{}
	var visit func(l *Lab)
	visit = func(l *Lab) {
		if done[l.Name] {
			return
		}
		done[l.Name] = true
		for _, p := range l.Prerequisites {
			if q := byName[p]; q != nil {
				visit(q)
			}
		}
		out = append(out, l)
	}
	for _, l := range all {
		visit(l)
	}
	return out
}
