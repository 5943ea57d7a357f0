package labs

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Lab is a parsed lab file.
type Lab struct {
	File          string        // where it came from: a path, or "labs/NAME.md" for embedded labs
	Name          string        // front matter "name": the default lab instance name
	Title         string        // front matter "title"
	Summary       string        // front matter "summary": one sentence for 'klab labs'
	Prerequisites []string      // front matter "prerequisites": labs to do first
	Time          time.Duration // front matter "time": how long it takes a student
	Backend       string        // front matter "backend": vxlan (default), host-gw or calico
	DNS           bool          // front matter "dns: true": the lab runs cluster DNS (its first node add has --dns)
	ControlPlane  string        // front matter "control-plane: etcd": etcd and node agents (its first node add has --control-plane etcd)
	CNI           bool          // front matter "cni: true": every pod add runs the real CNI plugins ($KLAB_CNI=1, as --cni)
	ProxyMode     string        // front matter "proxy-mode": iptables (default) or nftables, as its first node add says
	Intro         []Block       // prose before the first step
	Steps         []Step
	Source        []byte // the file as read
}

// Step is one "## " section of a lab.
type Step struct {
	Title  string
	Line   int
	Blocks []Block
}

// BlockKind says what a block of a step is.
type BlockKind int

const (
	Prose      BlockKind = iota // Markdown text (paragraphs, lists, quotes, ### headings)
	Display                     // a fenced block that is shown, never run (sh, text, ...)
	Action                      // a ```klab block: commands run in order
	CheckBlock                  // a ```check block: checks
)

func (k BlockKind) String() string {
	switch k {
	case Prose:
		return "prose"
	case Display:
		return "display"
	case Action:
		return "klab"
	case CheckBlock:
		return "check"
	}
	return fmt.Sprintf("BlockKind(%d)", int(k))
}

// Block is a piece of a step, in file order.
type Block struct {
	Kind     BlockKind
	Line     int        // first line (the fence line for fenced blocks)
	Text     string     // Prose: the Markdown; Display: the block's content
	Lang     string     // Display: the info string's first word
	Commands []*Command // Action
	Checks   []*Check   // CheckBlock
	Hint     string     // CheckBlock: the hint shown when one of its checks fails
	Timeout  time.Duration
	Settle   time.Duration // Action: how long a background command gets to get ready
	// Privileged marks a klab or check block whose lesson is the privilege
	// itself (a namespace built by hand, a CNI plugin run by hand): its
	// commands run unsandboxed, after 'klab run' has asked (see docs/security.md).
	Privileged bool
}

// Command is one klab invocation in a block.
type Command struct {
	Line       int
	Text       string   // as written, continuation lines joined, without a trailing " &"
	Args       []string // the words after "klab"
	Background bool     // written with a trailing " &": runs while the block's next commands run
	Privileged bool     // its block is marked privileged: it runs unsandboxed
}

// ExpectKind says how an expectation is matched.
type ExpectKind int

const (
	Contains    ExpectKind = iota // expect: some output line contains the text (spaces normalised)
	Matches                       // expect-re: the regexp matches the output ((?m): ^ and $ match at lines)
	NotContains                   // expect-not: no output line contains the text
)

// Expectation is one expect line of a check.
type Expectation struct {
	Kind ExpectKind
	Text string
	Line int
	re   *regexp.Regexp
}

// Check is one command of a check block with what its result must be.
type Check struct {
	Command
	Expect   []Expectation
	ExitCode int           // the exit status wanted when !NonZero (default 0)
	NonZero  bool          // exit: nonzero — the command must fail (e.g. a ping that must not get through)
	Retry    time.Duration // keep trying this long for the check to pass
	Timeout  time.Duration // one attempt
	Hint     string
	Step     string // the step's title
	// Passing marks a check of a state the lab only passes through (final=false
	// on its block): a fault introduced to be fixed a step later, an entry
	// that a later step removes. klab run checks it; klab lab check, which
	// grades the lab as it stands at the end, skips it.
	Passing bool
}

// Error is a problem at a place in a lab file.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return e.File + ": " + e.Msg
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return e.Msg
}

// ErrorList is every problem found in a lab; it is returned as an error.
type ErrorList []*Error

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// err returns l as an error, nil when empty.
func (l ErrorList) err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// Commands returns every command of the lab (actions and checks) in file order.
func (l *Lab) Commands() []*Command {
	var out []*Command
	for _, s := range l.Steps {
		for _, b := range s.Blocks {
			out = append(out, b.Commands...)
			for _, c := range b.Checks {
				out = append(out, &c.Command)
			}
		}
	}
	return out
}

// PrivilegedBlocks returns the runnable blocks marked privileged, in file
// order.
func (l *Lab) PrivilegedBlocks() []Block {
	var out []Block
	for _, s := range l.Steps {
		for _, b := range s.Blocks {
			if b.Privileged {
				out = append(out, b)
			}
		}
	}
	return out
}

// Checks returns every check of the lab in file order.
func (l *Lab) Checks() []*Check {
	var out []*Check
	for _, s := range l.Steps {
		for _, b := range s.Blocks {
			out = append(out, b.Checks...)
		}
	}
	return out
}
