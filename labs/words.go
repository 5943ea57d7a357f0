package labs

import (
	"errors"
	"github.com/klab-dev/klab/pkg/plan"
	"strings"
)

// word is one shell word of a command line.
type word struct {
	s      string
	quoted bool // some part was quoted or escaped: never an operator
}

// splitWords splits a command line into words the way a POSIX shell does for
// the simple cases labs need: blanks separate words, '...' is literal, "..."
// allows \" \\ \$ and \` escapes, and a backslash outside quotes escapes the
// next character. Nothing is expanded.
func splitWords(s string) ([]word, error) {
	var (
		out  []word
		cur  strings.Builder
		in   bool // inside a word
		quot bool
	)
	flush := func() {
		if in {
			out = append(out, word{cur.String(), quot})
		}
		cur.Reset()
		in, quot = false, false
	}
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == ' ' || r == '\t':
			flush()
		case r == '\'':
			in, quot = true, true
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			if j == len(rs) {
				return nil, errors.New("a ' quote is not closed")
			}
			cur.WriteString(string(rs[i+1 : j]))
			i = j
		case r == '"':
			in, quot = true, true
			j := i + 1
			for ; j < len(rs) && rs[j] != '"'; j++ {
				if rs[j] == '\\' && j+1 < len(rs) && strings.ContainsRune("\"\\$`", rs[j+1]) {
					j++
				}
				cur.WriteRune(rs[j])
			}
			if j == len(rs) {
				return nil, errors.New(`a " quote is not closed`)
			}
			i = j
		case r == '\\':
			in, quot = true, true
			if i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			}
		default:
			in = true
			cur.WriteRune(r)
		}
	}
	flush()
	return out, nil
}

// shellOperators are words a lab line may not contain unquoted: labs run one
// klab command per line, without a shell.
var shellOperators = map[string]bool{"|": true, "||": true, "&&": true, ";": true, ">": true, ">>": true, "<": true, "&": true, "2>&1": true}

// quoteWord quotes s for display if a shell would need it.
func quoteWord(s string) string { return plan.Quote(s) }

// joinWords is the inverse of splitWords for display.
func joinWords(args []string) string { return plan.ShellJoin(args) }
