// Package progress draws a progress bar for klab's long operations (a
// bulk build, a big 'klab apply', each size of 'klab bench') on a
// terminal, and nothing at all anywhere else: output that goes to a file,
// a pipe or a CI log, or that is JSON, stays exactly what it was.
//
// The bar is one line on stderr, redrawn in place with a carriage return
// at most every 50 ms and erased when the operation ends, so it never
// mixes with what the command prints on stdout.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Bar is a progress bar; a nil Bar draws nothing.
type Bar struct {
	w     io.Writer
	label string
	width int

	mu    sync.Mutex
	last  time.Time
	shown bool
}

// New returns a bar drawing on f when f is a terminal and enabled is
// true, else nil (which draws nothing).
func New(f *os.File, label string, enabled bool) *Bar {
	if !enabled || f == nil || !IsTerminal(f) {
		return nil
	}
	return NewOn(f, label)
}

// NewOn returns a bar drawing on w, whatever it is (tests).
func NewOn(w io.Writer, label string) *Bar { return &Bar{w: w, label: label, width: 30} }

// Set draws done of total (rate-limited; the last step always drawn).
func (b *Bar) Set(done, total int) {
	if b == nil || total <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if done < total && time.Since(b.last) < 50*time.Millisecond {
		return
	}
	b.last = time.Now()
	done = min(max(done, 0), total)
	fill := b.width * done / total
	fmt.Fprintf(b.w, "\r%s [%s%s] %d/%d", b.label, strings.Repeat("#", fill), strings.Repeat(".", b.width-fill), done, total)
	b.shown = true
}

// Done erases the bar.
func (b *Bar) Done() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shown {
		fmt.Fprint(b.w, "\r\033[K")
		b.shown = false
	}
}
