package labs

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
)

// Defaults for block options (see FORMAT.md).
const (
	DefaultRetry         = 5 * time.Second  // how long a check keeps trying before it fails
	DefaultCheckTimeout  = 20 * time.Second // one attempt of a check
	DefaultActionTimeout = 2 * time.Minute  // one action command
	DefaultSettle        = 1 * time.Second  // what a background command gets to get ready
	maxOption            = 30 * time.Minute // sanity bound for every duration option
)

// displayLangs are the info strings of display-only fenced blocks. Anything
// else that is not klab, check or hint is an error, to catch typos such as
// ```chek that would silently turn a check into a display block.
var displayLangs = map[string]bool{
	"": true, "text": true, "txt": true, "plaintext": true, "output": true,
	"sh": true, "bash": true, "shell": true, "console": true, "shell-session": true, "sh-session": true,
	"yaml": true, "yml": true, "json": true, "diff": true, "go": true, "ini": true, "conf": true,
	"iptables": true, "markdown": true, "md": true,
}

var frontMatterFields = []string{"name", "title", "summary", "prerequisites", "time", "backend", "dns", "control-plane", "cni", "proxy-mode"}

var (
	fenceRE   = regexp.MustCompile("^( {0,3})(`{3,}|~{3,})(.*)$")
	stepRE    = regexp.MustCompile(`^ {0,3}##[ \t]+(.*?)[ \t#]*$`)
	stepBare  = regexp.MustCompile(`^ {0,3}##[ \t]*#*[ \t]*$`)
	hintRE    = regexp.MustCompile(`(?i)^ {0,3}>[ \t]*(?:\*\*|__)?hint(?:\*\*|__)?[ \t]*:[ \t]*(?:\*\*|__)?[ \t]*(.*)$`)
	quoteRE   = regexp.MustCompile(`^ {0,3}>[ \t]?(.*)$`)
	fmKeyRE   = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9_-]*)[ \t]*:(.*)$`)
	fmItemRE  = regexp.MustCompile(`^[ \t]+-[ \t]+(.*)$`)
	keyLike   = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9_-]*):(\s|$)`)
	optionKey = regexp.MustCompile(`^(expect|expect-re|expect-not|exit)[ \t]*:(.*)$`)
)

// parser holds the state of one Parse call.
type parser struct {
	file  string
	lines []string
	errs  ErrorList
	lab   *Lab
	// where prose goes and whether a hint may still attach to the last check block
	step      *Step
	prose     []string
	proseLine int
	lastCheck *Block
}

func (p *parser) errorf(line int, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// Parse reads a lab. file names it in error messages. Parsing runs nothing;
// every problem found is returned together as an ErrorList with file:line
// positions.
func Parse(file string, src []byte) (*Lab, error) {
	text := strings.ReplaceAll(string(src), "\r\n", "\n")
	p := &parser{file: file, lines: strings.Split(text, "\n"), lab: &Lab{File: file, Source: src}}
	body := p.frontMatter()
	if body >= 0 {
		p.body(body)
	}
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
		return nil, p.errs
	}
	return p.lab, nil
}

// frontMatter parses the "---" block and returns the index of the first body
// line, or -1 if the body cannot be located.
func (p *parser) frontMatter() int {
	if len(p.lines) == 0 || strings.TrimRight(p.lines[0], " \t") != "---" {
		p.errorf(1, "a lab starts with front matter: a --- line, then name:, title:, summary: and time: lines, then another --- line")
		return -1
	}
	end := -1
	for i := 1; i < len(p.lines); i++ {
		if t := strings.TrimRight(p.lines[i], " \t"); t == "---" || t == "..." {
			end = i
			break
		}
	}
	if end < 0 {
		p.errorf(1, "the front matter is not closed: end it with a --- line")
		return -1
	}
	seen := map[string]int{}
	l := p.lab
	listKey := "" // a key with an empty value may be followed by "- item" lines
	for i := 1; i < end; i++ {
		ln, line := i+1, p.lines[i]
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if m := fmItemRE.FindStringSubmatch(line); m != nil {
			if listKey != "prerequisites" {
				p.errorf(ln, "a list item here belongs to no list field: only prerequisites takes a list")
				continue
			}
			l.Prerequisites = append(l.Prerequisites, p.fmPrereq(ln, unquote(strings.TrimSpace(m[1]))))
			continue
		}
		m := fmKeyRE.FindStringSubmatch(line)
		if m == nil {
			p.errorf(ln, "front matter lines are \"key: value\"; %q is not", t)
			continue
		}
		key, raw := strings.ToLower(m[1]), strings.TrimSpace(m[2])
		if !contains(frontMatterFields, key) {
			p.errorf(ln, "unknown front matter field %q: use %s", m[1], strings.Join(frontMatterFields, ", "))
			continue
		}
		if prev, dup := seen[key]; dup {
			p.errorf(ln, "front matter field %q is repeated (first on line %d): keep one", key, prev)
			continue
		}
		seen[key] = ln
		listKey = ""
		if i := strings.Index(raw, " #"); i >= 0 && !strings.HasPrefix(raw, `"`) && !strings.HasPrefix(raw, "'") {
			raw = strings.TrimSpace(raw[:i]) // YAML comment
		}
		val := unquote(raw)
		switch key {
		case "name":
			if err := netns.ValidateLab(val); err != nil {
				p.errorf(ln, "%v", err)
			}
			l.Name = val
		case "title":
			l.Title = val
		case "summary":
			l.Summary = val
		case "time":
			d, err := time.ParseDuration(strings.ReplaceAll(val, " ", ""))
			if err != nil || d <= 0 {
				p.errorf(ln, "time %q is not a duration: write how long the lab takes, like 15m or 1h30m", val)
			}
			l.Time = d
		case "dns":
			switch val {
			case "true":
				l.DNS = true
			case "false":
			default:
				p.errorf(ln, "dns %q is neither true nor false", val)
			}
		case "control-plane":
			if val != "etcd" {
				p.errorf(ln, "control-plane %q is not known: use etcd", val)
			}
			l.ControlPlane = val
		case "cni":
			switch val {
			case "true":
				l.CNI = true
			case "false":
			default:
				p.errorf(ln, "cni %q is neither true nor false", val)
			}
		case "backend":
			if val != "vxlan" && val != "host-gw" && val != "calico" {
				p.errorf(ln, "backend %q is not known: use vxlan, host-gw or calico", val)
			}
			l.Backend = val
		case "proxy-mode":
			if val != "iptables" && val != "nftables" {
				p.errorf(ln, "proxy-mode %q is not one klab builds: use iptables or nftables", val)
			}
			l.ProxyMode = val
		case "prerequisites":
			if raw == "" {
				listKey = key
				continue
			}
			v := strings.TrimSpace(raw)
			if strings.HasPrefix(v, "[") {
				if !strings.HasSuffix(v, "]") {
					p.errorf(ln, "prerequisites list is not closed: write [lab-a, lab-b]")
					continue
				}
				v = v[1 : len(v)-1]
			}
			for _, f := range strings.Split(v, ",") {
				if f = unquote(strings.TrimSpace(f)); f != "" {
					l.Prerequisites = append(l.Prerequisites, p.fmPrereq(ln, f))
				}
			}
		}
		if val == "" && key != "prerequisites" {
			p.errorf(ln, "front matter field %q is empty", key)
		}
	}
	for _, k := range []string{"name", "title", "summary", "time"} {
		if _, ok := seen[k]; !ok {
			p.errorf(1, "the front matter has no %s: field (%s)", k, map[string]string{
				"name":    "the lab's name, e.g. flannel-crossnode",
				"title":   "one line for the top of the lab",
				"summary": "one sentence for 'klab labs'",
				"time":    "how long the lab takes, e.g. 15m",
			}[k])
		}
	}
	return end + 1
}

func (p *parser) fmPrereq(line int, name string) string {
	if err := netns.ValidateLab(name); err != nil {
		p.errorf(line, "prerequisite %q is not a lab name", name)
	}
	return name
}

func unquote(s string) string {
	if len(s) >= 2 {
		switch {
		case s[0] == '"' && s[len(s)-1] == '"':
			if u, err := strconv.Unquote(s); err == nil {
				return u
			}
			return s[1 : len(s)-1]
		case s[0] == '\'' && s[len(s)-1] == '\'':
			return strings.ReplaceAll(s[1:len(s)-1], "''", "'")
		}
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// body parses steps, prose and fenced blocks from line index start.
func (p *parser) body(start int) {
	for i := start; i < len(p.lines); i++ {
		line, ln := p.lines[i], i+1
		if m := fenceRE.FindStringSubmatch(line); m != nil && !(m[2][0] == '`' && strings.Contains(m[3], "`")) {
			p.flushProse()
			indent, fence, info := len(m[1]), m[2], strings.TrimSpace(m[3])
			end := -1
			for j := i + 1; j < len(p.lines); j++ {
				t := strings.TrimRight(p.lines[j], " \t")
				if lead := len(t) - len(strings.TrimLeft(t, " ")); lead <= 3 {
					t = t[lead:]
					if len(t) >= len(fence) && strings.Trim(t, fence[:1]) == "" {
						end = j
						break
					}
				}
			}
			if end < 0 {
				p.errorf(ln, "this %s fence is never closed: add a %s line after the block", fence, fence)
				return
			}
			content := make([]string, 0, end-i-1)
			for _, c := range p.lines[i+1 : end] {
				for k := 0; k < indent && strings.HasPrefix(c, " "); k++ {
					c = c[1:]
				}
				content = append(content, c)
			}
			p.fenced(ln, info, content)
			i = end
			continue
		}
		if m := stepRE.FindStringSubmatch(line); m != nil || stepBare.MatchString(line) {
			p.flushProse()
			title := ""
			if m != nil {
				title = strings.TrimSpace(m[1])
			}
			if title == "" {
				p.errorf(ln, "a step heading needs a title: write \"## What this step does\"")
			}
			p.lab.Steps = append(p.lab.Steps, Step{Title: title, Line: ln})
			p.step = &p.lab.Steps[len(p.lab.Steps)-1]
			p.lastCheck = nil
			continue
		}
		if m := hintRE.FindStringSubmatch(line); m != nil {
			p.flushProse()
			hint := []string{strings.TrimSpace(m[1])}
			for i+1 < len(p.lines) {
				q := quoteRE.FindStringSubmatch(p.lines[i+1])
				if q == nil {
					break
				}
				hint = append(hint, q[1])
				i++
			}
			p.attachHint(ln, strings.TrimSpace(strings.Join(hint, "\n")))
			continue
		}
		if strings.TrimSpace(line) != "" {
			p.lastCheck = nil
		}
		if len(p.prose) == 0 {
			p.proseLine = ln
		}
		p.prose = append(p.prose, line)
	}
	p.flushProse()
	if len(p.lab.Steps) == 0 {
		p.errorf(len(p.lines), "a lab needs at least one step: start each step with a \"## \" heading")
	}
	// the step title on every check, for results
	for si := range p.lab.Steps {
		for _, b := range p.lab.Steps[si].Blocks {
			for _, c := range b.Checks {
				c.Step = p.lab.Steps[si].Title
				if c.Hint == "" {
					c.Hint = b.Hint
				}
			}
		}
	}
}

// addBlock appends b to the current step (or the intro) and returns it.
func (p *parser) addBlock(b Block) *Block {
	if p.step == nil {
		p.lab.Intro = append(p.lab.Intro, b)
		return &p.lab.Intro[len(p.lab.Intro)-1]
	}
	p.step.Blocks = append(p.step.Blocks, b)
	return &p.step.Blocks[len(p.step.Blocks)-1]
}

func (p *parser) flushProse() {
	// trim blank lines at both ends; keep the rest verbatim
	lines, first := p.prose, p.proseLine
	for len(lines) > 0 && strings.TrimSpace(lines[0]) == "" {
		lines, first = lines[1:], first+1
	}
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) > 0 {
		p.addBlock(Block{Kind: Prose, Line: first, Text: strings.Join(lines, "\n")})
	}
	p.prose = nil
}

func (p *parser) attachHint(line int, hint string) {
	if p.lastCheck == nil {
		p.errorf(line, "a hint must directly follow a check block (only blank lines between): move it under the ```check block it explains")
		return
	}
	if hint == "" {
		p.errorf(line, "this hint is empty: say what to look at when the check fails")
		return
	}
	if p.lastCheck.Hint != "" {
		p.lastCheck.Hint += "\n\n"
	}
	p.lastCheck.Hint += hint
	// the block's hint applies to its checks (set in body's final pass)
}

// fenced handles one fenced block.
func (p *parser) fenced(line int, info string, content []string) {
	fields := strings.Fields(info)
	lang := ""
	if len(fields) > 0 {
		lang = strings.ToLower(strings.Trim(fields[0], "{}."))
	}
	switch lang {
	case "klab", "check":
		if p.step == nil {
			p.errorf(line, "```%s blocks belong in a step: put a \"## \" heading above this block", lang)
			return
		}
		b := Block{Kind: Action, Line: line, Timeout: DefaultActionTimeout, Settle: DefaultSettle}
		retry := DefaultRetry
		passing := false
		if lang == "check" {
			b.Kind, b.Timeout = CheckBlock, DefaultCheckTimeout
		}
		for _, opt := range fields[1:] {
			k, v, ok := strings.Cut(opt, "=")
			var dst *time.Duration
			switch {
			case opt == "privileged":
				b.Privileged = true
				continue
			case ok && k == "timeout":
				dst = &b.Timeout
			case ok && k == "retry" && lang == "check":
				dst = &retry
			case ok && k == "settle" && lang == "klab":
				dst = &b.Settle
			case ok && k == "final" && lang == "check":
				if v != "true" && v != "false" {
					p.errorf(line, "option final=%s is not valid: write final=false for checks of a state the lab only passes through", v)
				}
				passing = v == "false"
				continue
			default:
				known := "timeout=DURATION, settle=DURATION and privileged"
				if lang == "check" {
					known = "timeout=DURATION, retry=DURATION, final=false and privileged"
				}
				p.errorf(line, "unknown option %q for a ```%s block: the options are %s", opt, lang, known)
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > maxOption || (k == "timeout" && d == 0) {
				p.errorf(line, "option %s=%s is not a valid duration: write it like %s=10s", k, v, k)
				continue
			}
			*dst = d
		}
		if lang == "klab" {
			b.Commands = p.actions(line, content)
			for _, c := range b.Commands {
				c.Privileged = b.Privileged
			}
			if len(logicalLines(line, content)) == 0 {
				p.errorf(line, "this ```klab block has no command: add lines like \"klab node add node1\"")
			}
			p.addBlock(b)
			p.lastCheck = nil
			return
		}
		b.Checks = p.checks(line, content, retry)
		for _, c := range b.Checks {
			c.Timeout, c.Passing, c.Privileged = b.Timeout, passing, b.Privileged
		}
		if len(logicalLines(line, content)) == 0 {
			p.errorf(line, "this ```check block has no command: add a klab command that must succeed, like \"klab ping pod-a pod-b\"")
		}
		p.lastCheck = p.addBlock(b)
	case "hint":
		p.attachHint(line, strings.TrimSpace(strings.Join(content, "\n")))
	default:
		if !displayLangs[lang] {
			p.errorf(line, "unknown block type %q: runnable blocks are ```klab (actions) and ```check (checks), hints are ```hint; display-only blocks use text, sh, console, yaml, ...", fields[0])
			return
		}
		p.addBlock(Block{Kind: Display, Line: line, Lang: lang, Text: strings.Join(content, "\n")})
		p.lastCheck = nil
	}
}

// logicalLine is a block line with its continuation lines joined.
type logicalLine struct {
	line int
	text string
}

// logicalLines joins lines ending in a backslash with the next and drops
// blank lines and # comments. fence is the fence's line number.
func logicalLines(fence int, content []string) []logicalLine {
	var out []logicalLine
	var cur *logicalLine
	for i, raw := range content {
		ln := fence + 1 + i
		t := strings.TrimSpace(raw)
		if cur == nil {
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			out = append(out, logicalLine{line: ln})
			cur = &out[len(out)-1]
		}
		if strings.HasSuffix(t, `\`) && !strings.HasSuffix(t, `\\`) {
			cur.text += strings.TrimSuffix(t, `\`) + " "
			continue
		}
		cur.text += t
		cur.text = strings.TrimSpace(cur.text)
		cur = nil
	}
	return out
}

// command parses one klab command line; background says whether " &" may end it.
func (p *parser) command(ll logicalLine, what string, background bool) *Command {
	text := ll.text
	c := &Command{Line: ll.line}
	if t := strings.TrimSuffix(text, "&"); t != text && strings.HasSuffix(t, " ") && !strings.HasSuffix(t, "& ") {
		if !background {
			p.errorf(ll.line, "checks cannot run in the background: remove the trailing &")
			return nil
		}
		text, c.Background = strings.TrimSpace(t), true
	}
	words, err := splitWords(text)
	if err != nil {
		p.errorf(ll.line, "%v in %q", err, text)
		return nil
	}
	if len(words) == 0 || words[0].s != "klab" {
		first := ""
		if len(words) > 0 {
			first = words[0].s
		}
		p.errorf(ll.line, "%s run klab verbs, and %q is not one: start the line with klab (to run %s inside a node or pod, write \"klab exec node1 -- %s\")", what, first, first, text)
		return nil
	}
	if len(words) == 1 {
		p.errorf(ll.line, "\"klab\" alone is not a command: add a verb, like \"klab node add node1\"")
		return nil
	}
	for _, w := range words {
		if !w.quoted && shellOperators[w.s] {
			p.errorf(ll.line, "%q is a shell operator, and lab lines are not run by a shell: write one klab command per line (quote it if it is an argument)", w.s)
			return nil
		}
	}
	c.Text = text
	for _, w := range words[1:] {
		c.Args = append(c.Args, w.s)
	}
	return c
}

func (p *parser) actions(fence int, content []string) []*Command {
	var out []*Command
	for _, ll := range logicalLines(fence, content) {
		if c := p.command(ll, "```klab blocks", true); c != nil {
			out = append(out, c)
		}
	}
	return out
}

func (p *parser) checks(fence int, content []string, retry time.Duration) []*Check {
	var out []*Check
	var cur *Check
	bad := false // the last command line had an error: skip its options quietly
	for _, ll := range logicalLines(fence, content) {
		if m := optionKey.FindStringSubmatch(ll.text); m != nil {
			key, val := m[1], strings.TrimSpace(m[2])
			if bad {
				continue
			}
			if cur == nil {
				p.errorf(ll.line, "%s: comes before any command: put it under the klab command whose output it tests", key)
				continue
			}
			if val == "" && key != "exit" {
				p.errorf(ll.line, "%s: needs the text to look for", key)
				continue
			}
			switch key {
			case "expect":
				cur.Expect = append(cur.Expect, Expectation{Kind: Contains, Text: val, Line: ll.line})
			case "expect-not":
				cur.Expect = append(cur.Expect, Expectation{Kind: NotContains, Text: val, Line: ll.line})
			case "expect-re":
				re, err := regexp.Compile("(?m)" + val)
				if err != nil {
					p.errorf(ll.line, "expect-re: %q is not a valid regular expression: %v", val, err)
					continue
				}
				cur.Expect = append(cur.Expect, Expectation{Kind: Matches, Text: val, Line: ll.line, re: re})
			case "exit":
				switch strings.ToLower(val) {
				case "nonzero", "non-zero", "fail", "failure":
					cur.NonZero = true
				default:
					n, err := strconv.Atoi(val)
					if err != nil || n < 0 || n > 255 {
						p.errorf(ll.line, "exit: %q is not an exit status: write a number from 0 to 255, or nonzero", val)
						continue
					}
					cur.ExitCode, cur.NonZero = n, false
				}
			}
			continue
		}
		if m := keyLike.FindStringSubmatch(ll.text); m != nil {
			p.errorf(ll.line, "unknown check option %q: under a check command use expect:, expect-re:, expect-not: or exit:", m[1]+":")
			bad, cur = true, nil
			continue
		}
		c := p.command(ll, "```check blocks", false)
		if bad = c == nil; bad {
			cur = nil
			continue
		}
		cur = &Check{Command: *c, Retry: retry}
		out = append(out, cur)
	}
	return out
}
