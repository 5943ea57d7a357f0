package main

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/bench"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/topo"
)

// BenchmarkGraph100x10 draws a 100-node x 10-pod flannel lab: 'klab graph
// -o svg' beside 'klab list' of the same lab (the baseline: it too reads
// every namespace), topo.Read alone in-process, and the klab ui page's
// first draw in headless Chromium (draw-ms, measured by the page with
// performance.now: fetch, insert the SVG, wire the clicks), plus how long
// a pod added with the CLI takes to appear on the page (appear-ms).
// Run with: go test ./cmd/klab -run '^$' -bench Graph100x10 -benchtime 5x
func BenchmarkGraph100x10(b *testing.B) {
	testutil.RequireRoot(b)
	bin := klabBinary(b)
	state := benchStateDir(b)
	lab := testutil.LabName(b, "gr-big")
	c, err := cluster.Open(state, lab, &cluster.Options{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := c.Build(bench.FlannelSpec(100, 10)); err != nil {
		c.Close()
		b.Fatal(err)
	}
	c.Close()
	b.Cleanup(func() { cluster.Destroy(state, lab, nil, nil) })
	cliRun := func(b *testing.B, args ...string) {
		out, err := exec.Command(bin, append([]string{"--state-dir", state, "--lab", lab}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("klab %v: %v\n%s", args, err, out)
		}
	}
	b.Run("klab-list", func(b *testing.B) {
		for b.Loop() {
			cliRun(b, "list")
		}
	})
	b.Run("klab-graph-svg", func(b *testing.B) {
		for b.Loop() {
			cliRun(b, "graph", "-o", "svg")
		}
	})
	b.Run("topo-read", func(b *testing.B) {
		l, err := cluster.Load(state, lab)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			topo.Read(l)
		}
	})
	b.Run("ui-page", func(b *testing.B) {
		if _, err := exec.LookPath(chromiumPath); err != nil {
			b.Skip("chromium is not installed")
		}
		full, _ := startUI(b, &cli{t: b, bin: bin, state: state}, lab)
		opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath), chromedp.NoSandbox)
		actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
		defer cancel()
		ctx, cancel := chromedp.NewContext(actx)
		defer cancel()
		var draw, appear time.Duration
		n := 0
		for b.Loop() {
			if err := chromedp.Do(ctx, chromedp.Navigate(full), chromedp.WaitVisible("#node-node100")); err != nil {
				b.Fatal(err)
			}
			ms, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.klab.drawMs`))
			if err != nil {
				b.Fatal(err)
			}
			draw += time.Duration(ms * float64(time.Millisecond))
			name := "grb" + time.Now().Format("150405.000000")[7:]
			cliRun(b, "pod", "add", name, "--node", "node50")
			t0 := time.Now()
			if err := chromedp.Do(ctx, chromedp.WaitVisible("#pod-"+name)); err != nil {
				b.Fatal(err)
			}
			appear += time.Since(t0)
			cliRun(b, "pod", "del", name)
			n++
		}
		b.ReportMetric(float64(draw.Milliseconds())/float64(n), "draw-ms")
		b.ReportMetric(float64(appear.Milliseconds())/float64(n), "appear-ms")
	})
}
