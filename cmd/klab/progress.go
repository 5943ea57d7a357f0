package main

import (
	"os"

	"github.com/klab-dev/klab/pkg/progress"
)

// progressBar returns a func drawing a bar labelled label on stderr, and
// one erasing it; both do nothing when stderr is not a terminal, with -o
// json and with --dry-run (whose stdout is a script).
func progressBar(label string) (set func(done, total int), done func()) {
	bar := progress.New(os.Stderr, label, !jsonOutput() && !globals.dryRun)
	if bar == nil {
		return nil, func() {}
	}
	return bar.Set, bar.Done
}
