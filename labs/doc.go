// Package labs holds klab's guided labs and the machinery that runs them: a
// lab is ONE Markdown file that is at the same time the walkthrough a student
// reads (it renders like any README on GitHub) and the script klab executes.
// Front matter between "---" lines names the lab; every "## " heading starts a
// step; prose is prose; fenced blocks tagged "klab" hold actions (klab verbs,
// one per line), blocks tagged "check" hold checks (klab verbs that must
// succeed, optionally with expect: lines their output must contain), and a
// "> Hint:" blockquote after a check block is shown when one of its checks
// fails. Every other fenced block (sh, text, ...) is display-only. docs/lab-format.md is the full
// specification.
//
// Parse turns a file into a *Lab (with file:line errors, running nothing);
// Lint adds checks against the real command tree through a callback, so this
// package never imports the cluster code; a Renderer prints prose, commands,
// output and check results for a terminal; a Runner executes a lab through an
// Executor — in production the klab binary itself, re-executed with the lab
// selected through $KLAB_LAB — so the runner stays a thin, testable layer over
// the verbs a student could type by hand. The labs shipped with klab are
// embedded (see List and Load).
package labs
