package labs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// ANSI styles; used only when Renderer.Color is set.
const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiDim    = "\x1b[2m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
)

// Renderer prints a lab for a terminal: Markdown prose wrapped to Width with
// inline `code` highlighted, display blocks indented, each command before it
// runs, its output, and check results. Colour is used only when Color is set
// (NewRenderer sets it for a terminal without NO_COLOR).
type Renderer struct {
	W     io.Writer
	Color bool
	Width int // wrap column; 0 means 80
	// AllRules keeps the rule payloads in commands' output whole. Without
	// it, Output folds each iptables-restore heredoc longer than
	// FoldRuleLines into one line: what it loads, how many rules, and the
	// 'klab show NODE' that reads them (a lab's --explain is about links,
	// addresses and routes as much as rules; 'klab --explain' typed on the
	// command line is not rendered and prints everything).
	AllRules bool
}

// FoldRuleLines is the longest rule payload Output shows unfolded.
const FoldRuleLines = 12

// NewRenderer renders to f, in colour when f is a terminal, $NO_COLOR is unset
// and $TERM is not "dumb", wrapped to the terminal's width (at most 100).
func NewRenderer(f *os.File) *Renderer {
	r := &Renderer{W: f, Width: 80}
	if IsTerminal(f) {
		_, noColor := os.LookupEnv("NO_COLOR")
		r.Color = !noColor && os.Getenv("TERM") != "dumb"
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col >= 40 {
			r.Width = min(int(ws.Col), 100)
		}
	}
	return r
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (r *Renderer) width() int {
	if r.Width <= 0 {
		return 80
	}
	return r.Width
}

func (r *Renderer) style(code, s string) string {
	if !r.Color || code == "" || s == "" {
		return s
	}
	return code + s + ansiReset
}

func (r *Renderer) printf(format string, args ...any) { fmt.Fprintf(r.W, format, args...) }

// Header prints the lab's title, summary and facts.
func (r *Renderer) Header(l *Lab, instance string) {
	r.printf("%s\n", r.style(ansiBold, l.Title))
	r.printf("%s\n", r.style(ansiBold, strings.Repeat("=", min(r.width(), utf8.RuneCountInString(l.Title)))))
	r.Markdown(l.Summary)
	facts := []string{"lab " + instance}
	if l.Time > 0 {
		facts = append(facts, "about "+fmtDuration(l.Time))
	}
	if l.DNS {
		facts = append(facts, "cluster DNS")
	}
	if l.ControlPlane != "" {
		facts = append(facts, "control plane "+l.ControlPlane)
	}
	if l.Backend != "" {
		facts = append(facts, "backend "+l.Backend)
	}
	if len(l.Prerequisites) > 0 {
		facts = append(facts, "do first: "+strings.Join(l.Prerequisites, ", "))
	}
	r.printf("%s\n\n", r.style(ansiDim, strings.Join(facts, " · ")))
}

func fmtDuration(d time.Duration) string {
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Step prints a step heading ("Step 2/5: ...").
func (r *Renderer) Step(i, n int, title string) {
	h := fmt.Sprintf("Step %d/%d: %s", i, n, title)
	r.printf("%s\n%s\n\n", r.style(ansiBold, h), r.style(ansiBold, strings.Repeat("-", min(r.width(), utf8.RuneCountInString(h)))))
}

// Block prints a prose or display block (runnable blocks are printed by the
// runner as they run).
func (r *Renderer) Block(b Block) {
	switch b.Kind {
	case Prose:
		r.Markdown(b.Text)
	case Display:
		r.Code(b.Text)
	}
}

// Code prints a display block, indented.
func (r *Renderer) Code(text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		r.printf("    %s\n", r.style(ansiDim, line))
	}
	r.printf("\n")
}

// Command prints a command before it runs.
func (r *Renderer) Command(text string) {
	r.printf("%s %s\n", r.style(ansiBold+ansiCyan, "$"), r.style(ansiBold, text))
}

// Note prints a line of commentary from klab itself.
func (r *Renderer) Note(format string, args ...any) {
	r.printf("%s\n", r.style(ansiDim, fmt.Sprintf(format, args...)))
}

// Output returns a writer that indents what is written to it (a command's
// output), folding long rule payloads unless AllRules is set.
func (r *Renderer) Output() io.Writer {
	iw := &indentWriter{w: r.W, prefix: "  ", bol: true}
	if r.AllRules {
		return iw
	}
	return &ruleFolder{r: r, w: iw}
}

var (
	// heredocRE is the first line of a rule payload in --explain output:
	// "ip netns exec klab.LAB.NODE iptables-restore ... <<'EOF'".
	heredocRE = regexp.MustCompile(`^\s*ip netns exec (\S+) (iptables-restore|ip6tables-restore|iptables-nft-restore)\b.*<<'?(\w+)'?\s*$`)
	ruleRE    = regexp.MustCompile(`^\s*-[AI] `)
	tableRE   = regexp.MustCompile(`^\s*\*(\w+)\s*$`)
)

// ruleFolder passes a command's output through line by line, holding back
// a rule-loading heredoc until its end marker and then writing it whole
// (short) or as one summary line (long).
type ruleFolder struct {
	r       *Renderer
	w       io.Writer
	partial []byte   // a line not yet ended
	held    []string // the heredoc being collected, first line first
	ns, end string
}

func (f *ruleFolder) Write(p []byte) (int, error) {
	f.partial = append(f.partial, p...)
	for {
		i := bytes.IndexByte(f.partial, '\n')
		if i < 0 {
			break
		}
		line := string(f.partial[:i+1])
		f.partial = f.partial[i+1:]
		if err := f.line(line); err != nil {
			return 0, err
		}
	}
	// Not inside a heredoc, and the unfinished line cannot start one: show
	// it now (a prompt, progress).
	if rest := strings.TrimLeft(string(f.partial), " \t"); len(f.held) == 0 && len(f.partial) > 0 &&
		!strings.HasPrefix(rest, "ip netns exec") && !strings.HasPrefix("ip netns exec", rest) {
		if _, err := f.w.Write(f.partial); err != nil {
			return 0, err
		}
		f.partial = f.partial[:0]
	}
	return len(p), nil
}

func (f *ruleFolder) line(line string) error {
	if len(f.held) == 0 {
		if m := heredocRE.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
			f.held, f.ns, f.end = []string{line}, m[1], m[3]
			return nil
		}
		_, err := io.WriteString(f.w, line)
		return err
	}
	f.held = append(f.held, line)
	if strings.TrimSpace(line) != f.end && len(f.held) < 100000 {
		return nil
	}
	held := f.held
	f.held = nil
	if len(held)-2 <= FoldRuleLines {
		_, err := io.WriteString(f.w, strings.Join(held, ""))
		return err
	}
	var tables []string
	rules := 0
	for _, l := range held[1 : len(held)-1] {
		if m := tableRE.FindStringSubmatch(l); m != nil {
			tables = append(tables, m[1])
		} else if ruleRE.MatchString(l) {
			rules++
		}
	}
	target := f.ns
	if i := strings.LastIndexByte(target, '.'); i >= 0 && strings.HasPrefix(target, "klab.") {
		target = target[i+1:]
	}
	first := strings.TrimRight(strings.TrimSpace(held[0]), "\n")
	first = first[:strings.LastIndex(first, "<<")]
	summary := fmt.Sprintf("%s<<'%s' ... %s\n", first, f.end,
		f.r.style(ansiDim, fmt.Sprintf("(folded: loads %d rules into the %s table%s; read them with 'klab show %s')",
			rules, strings.Join(tables, " and "), plural(len(tables), "", "s"), target)))
	_, err := io.WriteString(f.w, summary)
	return err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// CheckResult prints one check result: ✓ or ✗ with the command; for a failed
// check also why, the output and the hint. verbose prints the output of passed
// checks too.
func (r *Renderer) CheckResult(c CheckResult, verbose bool) {
	if c.Passed {
		r.printf("%s %s\n", r.style(ansiGreen, "✓"), c.Command)
		if verbose && strings.TrimSpace(c.Output) != "" {
			io.WriteString(r.Output(), tail(c.Output, 20))
		}
		return
	}
	r.printf("%s %s\n", r.style(ansiRed+ansiBold, "✗"), r.style(ansiBold, c.Command))
	if c.Reason != "" {
		r.printf("  %s %s\n", r.style(ansiRed, "failed:"), c.Reason)
	}
	if strings.TrimSpace(c.Output) != "" {
		r.printf("  %s\n", r.style(ansiDim, "output:"))
		io.WriteString(&indentWriter{w: r.W, prefix: "    ", bol: true}, tail(c.Output, 20))
	}
	if c.Hint != "" {
		r.printf("%s", r.wrapParagraph(c.Hint, "  "+r.style(ansiYellow+ansiBold, "Hint:")+" ", "        ", 8))
	}
}

// tail returns the last n lines of s, ending in a newline.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n") + "\n"
}

// indentWriter prefixes every line written through it.
type indentWriter struct {
	w      io.Writer
	prefix string
	bol    bool
}

func (iw *indentWriter) Write(p []byte) (int, error) {
	var b []byte
	for _, c := range p {
		if iw.bol {
			b = append(b, iw.prefix...)
			iw.bol = false
		}
		b = append(b, c)
		if c == '\n' {
			iw.bol = true
		}
	}
	if _, err := iw.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

var (
	headingRE = regexp.MustCompile(`^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$`)
	listRE    = regexp.MustCompile(`^([ \t]*)([-*+]|\d{1,9}[.)])[ \t]+(.*)$`)
)

// Markdown prints Markdown prose: headings, paragraphs (wrapped), lists,
// blockquotes, tables and indented code, with inline code, bold and links.
func (r *Renderer) Markdown(text string) {
	type item struct {
		text  string
		tight bool // no blank line before it
	}
	var (
		items     []item
		para      []string
		first     string
		rest      string
		kind      string // of the paragraph being collected: "para", "list", "quote"
		lastKind  string // of the last item emitted
		listDepth bool   // a list item was seen since the last heading or plain paragraph
	)
	add := func(k, text string) {
		items = append(items, item{text, k == lastKind && (k == "list" || k == "table" || k == "code")})
		lastKind = k
	}
	flush := func() {
		if len(para) > 0 {
			add(kind, r.wrapParagraph(strings.Join(para, " "), first, rest, utf8.RuneCountInString(rest)))
		}
		para, kind = nil, ""
	}
	for _, line := range strings.Split(strings.ReplaceAll(text, "\t", "    "), "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "":
			flush()
		case headingRE.MatchString(line):
			flush()
			add("heading", r.style(ansiBold, r.plain(headingRE.FindStringSubmatch(line)[2]))+"\n")
			listDepth = false
		case strings.HasPrefix(t, ">"):
			if kind != "quote" {
				flush()
				kind, first, rest = "quote", "  │ ", "  │ "
			}
			para = append(para, strings.TrimSpace(strings.TrimPrefix(t, ">")))
		case strings.HasPrefix(t, "|"):
			flush()
			add("table", "  "+r.inlineString(line)+"\n")
		case strings.HasPrefix(line, "    ") && kind == "" && !listDepth:
			flush()
			add("code", "    "+r.style(ansiDim, line[4:])+"\n")
		case listRE.MatchString(line):
			flush()
			m := listRE.FindStringSubmatch(line)
			marker := m[2]
			if marker == "-" || marker == "*" || marker == "+" {
				marker = "•"
			}
			kind, listDepth = "list", true
			first = "  " + strings.Repeat(" ", len(m[1])/2*2) + marker + " "
			rest = strings.Repeat(" ", utf8.RuneCountInString(first))
			para = append(para, m[3])
		default:
			if kind == "" {
				kind, first, rest = "para", "", ""
				if listDepth && strings.HasPrefix(line, "  ") { // a list item's second paragraph
					first, rest = "    ", "    "
				} else {
					listDepth = false
				}
			}
			para = append(para, t)
		}
	}
	flush()
	for i, it := range items {
		if i > 0 && !it.tight {
			r.printf("\n")
		}
		r.printf("%s", it.text)
	}
	if len(items) > 0 {
		r.printf("\n")
	}
}

// token is a word of prose: its visible text and its styled form.
type token struct{ vis, out string }

// segment is a run of inline text with one style.
type segment struct{ text, style string }

var linkRE = regexp.MustCompile(`^!?\[([^\]]*)\]\(([^)\s]*)\)`)

// inlineSegments splits Markdown inline text into styled runs.
func (r *Renderer) inlineSegments(s string) []segment {
	var segs []segment
	var plain strings.Builder
	emit := func(text, style string) {
		if plain.Len() > 0 {
			segs = append(segs, segment{plain.String(), ""})
			plain.Reset()
		}
		segs = append(segs, segment{text, style})
	}
	for i := 0; i < len(s); {
		switch {
		case s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\\`*_[]()#+-.!<>|", s[i+1]) >= 0:
			plain.WriteByte(s[i+1])
			i += 2
		case s[i] == '`':
			n := 0
			for i+n < len(s) && s[i+n] == '`' {
				n++
			}
			fence := s[i : i+n]
			end := strings.Index(s[i+n:], fence)
			if end < 0 {
				plain.WriteString(fence)
				i += n
				continue
			}
			code := s[i+n : i+n+end]
			if len(code) >= 2 && code[0] == ' ' && code[len(code)-1] == ' ' {
				code = code[1 : len(code)-1]
			}
			emit(code, ansiCyan)
			i += n + end + n
		case strings.HasPrefix(s[i:], "**") || strings.HasPrefix(s[i:], "__"):
			end := strings.Index(s[i+2:], s[i:i+2])
			if end <= 0 {
				plain.WriteString(s[i : i+2])
				i += 2
				continue
			}
			emit(s[i+2:i+2+end], ansiBold)
			i += 2 + end + 2
		case s[i] == '[' || s[i] == '!' && i+1 < len(s) && s[i+1] == '[':
			m := linkRE.FindStringSubmatch(s[i:])
			if m == nil {
				plain.WriteByte(s[i])
				i++
				continue
			}
			plain.WriteString(m[1])
			if m[2] != "" && m[2] != m[1] && !strings.HasPrefix(m[2], "#") {
				plain.WriteString(" (" + m[2] + ")")
			}
			i += len(m[0])
		default:
			plain.WriteByte(s[i])
			i++
		}
	}
	if plain.Len() > 0 {
		segs = append(segs, segment{plain.String(), ""})
	}
	return segs
}

// plain renders inline Markdown to text, with styles but unwrapped.
func (r *Renderer) plain(s string) string {
	var b strings.Builder
	for _, sg := range r.inlineSegments(s) {
		b.WriteString(sg.text)
	}
	return b.String()
}

func (r *Renderer) inlineString(s string) string {
	var b strings.Builder
	for _, sg := range r.inlineSegments(s) {
		b.WriteString(r.style(sg.style, sg.text))
	}
	return b.String()
}

// words splits inline Markdown into wrap-able tokens; styled runs may be
// broken at their spaces and stay styled on both sides.
func (r *Renderer) words(s string) []token {
	var out []token
	newWord := true
	for _, sg := range r.inlineSegments(s) {
		text := strings.NewReplacer("\n", " ", "\t", " ").Replace(sg.text)
		if strings.HasPrefix(text, " ") {
			newWord = true
		}
		for j, part := range strings.Fields(text) {
			if j > 0 {
				newWord = true
			}
			if newWord {
				out = append(out, token{})
				newWord = false
			}
			w := &out[len(out)-1]
			w.vis += part
			w.out += r.style(sg.style, part)
		}
		if strings.HasSuffix(text, " ") {
			newWord = true
		}
	}
	return out
}

// wrapParagraph wraps inline Markdown to the renderer's width; first prefixes
// the first line and rest the others (restWidth is rest's visible width;
// first's is taken to be the same).
func (r *Renderer) wrapParagraph(s, first, rest string, restWidth int) string {
	var b strings.Builder
	width := r.width()
	b.WriteString(first)
	col := restWidth
	startCol := col
	for _, w := range r.words(s) {
		n := utf8.RuneCountInString(w.vis)
		if col > startCol && col+1+n > width {
			b.WriteString("\n" + rest)
			col = restWidth
		}
		if col > startCol {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(w.out)
		col += n
	}
	b.WriteByte('\n')
	return b.String()
}

// Lab prints a whole lab without running it: prose, display blocks, the
// actions as commands and the checks with their expectations and hints.
func (r *Renderer) Lab(l *Lab) {
	r.Header(l, l.Name)
	for _, b := range l.Intro {
		r.Block(stripTitle(b))
	}
	for i, s := range l.Steps {
		r.Step(i+1, len(l.Steps), s.Title)
		for _, b := range s.Blocks {
			switch b.Kind {
			case Action:
				for _, c := range b.Commands {
					if c.Background {
						r.Command(c.Text + " &")
					} else {
						r.Command(c.Text)
					}
				}
				r.printf("\n")
			case CheckBlock:
				for _, c := range b.Checks {
					r.printf("%s %s\n", r.style(ansiYellow, "check:"), c.Text)
					for _, e := range c.Expect {
						r.printf("    %s %s\n", r.style(ansiDim, [...]string{"expect:", "expect-re:", "expect-not:"}[e.Kind]), e.Text)
					}
					if c.NonZero {
						r.printf("    %s nonzero\n", r.style(ansiDim, "exit:"))
					} else if c.ExitCode != 0 {
						r.printf("    %s %d\n", r.style(ansiDim, "exit:"), c.ExitCode)
					}
				}
				if b.Hint != "" {
					r.printf("%s", r.wrapParagraph(b.Hint, "  "+r.style(ansiYellow+ansiBold, "Hint:")+" ", "        ", 8))
				}
				r.printf("\n")
			default:
				r.Block(b)
			}
		}
	}
}
