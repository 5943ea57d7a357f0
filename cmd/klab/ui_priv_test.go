package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/klab-dev/klab/internal/testutil"
	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/netns"
)

const chromiumPath = "/usr/bin/chromium"

// startUI starts 'klab ui' on lab and returns its URL (with the token)
// and a func stopping it; it is stopped when the test ends at the latest.
func startUI(t testing.TB, c *cli, lab string) (string, func()) {
	t.Helper()
	cmd := c.cmd(nil, "ui", "--lab", lab)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Signal(os.Interrupt)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
	}
	t.Cleanup(stop)
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		re := regexp.MustCompile(`http://\S+token=\S+`)
		for sc.Scan() {
			if m := re.FindString(sc.Text()); m != "" {
				urlc <- m
			}
		}
	}()
	select {
	case u := <-urlc:
		return u, stop
	case <-time.After(10 * time.Second):
		t.Fatal("klab ui printed no URL")
	}
	return "", stop
}

// labFingerprint is what must not change while the page is used: the
// state file and the kernel's picture of the lab.
func labFingerprint(t *testing.T, c *cli, lab string) string {
	t.Helper()
	st, err := os.ReadFile(cluster.StateFile(c.state, lab))
	if err != nil {
		t.Fatal(err)
	}
	return string(st) + "\n" + c.must("graph", "--lab", lab, "-o", "json")
}

// The live web view in a real browser (headless Chromium driven over the
// DevTools protocol): every object of the lab is on the page, a pod added
// with the CLI appears without a reload, a journey animates through the
// expected hops; the token and the origin check refuse strangers, and
// nothing the page does changes the lab.
func TestUIInBrowser(t *testing.T) {
	c := newCLI(t)
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skip("chromium is not installed (/usr/bin/chromium): scripts/install-deps.sh installs it")
	}
	t.Parallel()
	lab := testutil.LabName(t, "gr")
	c.destroyOnCleanup(lab) // its server process too
	for _, step := range crossnodeBuild {
		c.must(append(step, "--lab", lab)...)
	}
	art := os.Getenv("KLAB_ARTIFACTS")
	if art == "" {
		art = t.TempDir()
	}
	shot := func(ctx context.Context, name string) {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			return
		}
		p := filepath.Join(art, "klab-ui-"+name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Error(err)
		}
		t.Logf("screenshot %s", p)
	}

	full, stopUI := startUI(t, c, lab)
	u, _ := url.Parse(full)
	base := u.Scheme + "://" + u.Host

	// Strangers: no token, a wrong one, a POST without the cookie, a POST
	// with it from another origin.
	before := labFingerprint(t, c, lab)
	status := func(client *http.Client, method, path string, hdr map[string]string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(`{"from":"pod-a","target":"pod-c"}`))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	plain := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, p := range []string{"/", "/api/topology", "/api/events", "/api/object?name=node1", "/static/app.js", "/?token=0123456789abcdef0123456789abcdef"} {
		if got := status(plain, "GET", p, nil); got != http.StatusForbidden {
			t.Errorf("GET %s without the token: status %d, want 403", p, got)
		}
	}
	if got := status(plain, "POST", "/api/journey", map[string]string{"Origin": base}); got != http.StatusForbidden {
		t.Errorf("POST without the token: status %d, want 403", got)
	}
	jar, _ := cookiejar.New(nil)
	withCookie := &http.Client{Jar: jar}
	if got := status(withCookie, "GET", "/?"+u.RawQuery, nil); got != http.StatusOK {
		t.Fatalf("GET with the token: status %d", got)
	}
	if got := status(withCookie, "POST", "/api/journey", map[string]string{"Origin": "http://evil.example"}); got != http.StatusForbidden {
		t.Errorf("POST from another origin: status %d, want 403", got)
	}
	if got := status(withCookie, "POST", "/api/journey", map[string]string{"Sec-Fetch-Site": "cross-site"}); got != http.StatusForbidden {
		t.Errorf("POST with Sec-Fetch-Site cross-site: status %d, want 403", got)
	}
	for _, m := range []string{"PUT", "DELETE"} {
		if got := status(withCookie, m, "/api/topology", map[string]string{"Origin": base}); got < 400 {
			t.Errorf("%s /api/topology: status %d, want a refusal", m, got)
		}
	}
	if got := status(withCookie, "GET", "/api/object?name=node1", nil); got != http.StatusOK {
		t.Errorf("GET /api/object with the cookie: status %d", got)
	}

	// The browser.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	objects := []string{"#underlay", "#external", "#node-node1", "#node-node2", "#pod-pod-a", "#pod-pod-c", "#tunnel-node1-node2", "#tunnel-node2-node1", "#svc-web"}
	if err := chromedp.Do(ctx, chromedp.Navigate(full), chromedp.WaitVisible("#node-node2")); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	drawMs, _ := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.klab.drawMs`))
	t.Logf("the page drew the 2-node lab in %.1f ms (performance.now)", drawMs)
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	if strings.Contains(loc, "token=") {
		t.Errorf("the token stays in the address bar: %s", loc)
	}
	for _, sel := range objects {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll(`+jsString(sel)+`).length`))
		if err != nil || n != 1 {
			t.Errorf("the page has %d %s (%v), want 1", n, sel, err)
		}
	}
	shot(ctx, "topology")

	// A pod added with the CLI appears without a reload.
	chromedp.Run(ctx, chromedp.Evaluate[int](`window.noReload = 1`))
	c.must("pod", "add", "pod-b", "--node", "node1", "--lab", lab)
	added := time.Now()
	if err := chromedp.Do(ctx, chromedp.WaitVisible("#pod-pod-b")); err != nil {
		t.Fatalf("pod-b did not appear: %v", err)
	}
	t.Logf("pod-b appeared %v after 'klab pod add' returned", time.Since(added).Round(time.Millisecond))
	still, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.noReload || 0`))
	if still != 1 {
		t.Error("the page reloaded to show the new pod")
	}
	shot(ctx, "pod-added")

	// No endpoint changes the lab: reads, the events stream, and a journey.
	before = labFingerprint(t, c, lab)

	// A node's kernel state on click.
	if err := chromedp.Do(ctx, chromedp.Click("#node-node1 > rect"), chromedp.WaitVisible(`#object pre[data-section="routes"]`)); err != nil {
		t.Fatalf("click node1: %v", err)
	}
	routes, _ := chromedp.Run(ctx, chromedp.Text(`#object pre[data-section="routes"]`))
	if !strings.Contains(routes, "10.244.2.0/24 via 10.244.2.0 dev flannel.1") {
		t.Errorf("node1's routes on the page lack flannel's route to node2's pods:\n%s", routes)
	}
	// Every route iproute2 reads in node1 is on the page.
	ipOut, err := exec.Command("ip", "-n", netns.Name(lab, "node1"), "-j", "route", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var ipRoutes []struct{ Dst, Dev string }
	if err := json.Unmarshal(ipOut, &ipRoutes); err != nil || len(ipRoutes) == 0 {
		t.Fatalf("ip -j route: %v %s", err, ipOut)
	}
	for _, r := range ipRoutes {
		if !strings.Contains(routes, r.Dst+" ") || !strings.Contains(routes, "dev "+r.Dev) {
			t.Errorf("ip route has %s dev %s, the page does not:\n%s", r.Dst, r.Dev, routes)
		}
	}
	shot(ctx, "node1")

	// A journey through the Service: pod-a to web:80, DNATed to pod-c.
	if err := chromedp.Do(ctx,
		chromedp.SetValue("#from", "pod-a"),
		chromedp.SetValue("#target", "web:80"),
		chromedp.Click("#run"),
		chromedp.WaitVisible("#hops li"),
	); err != nil {
		t.Fatalf("run the journey: %v", err)
	}
	shot(ctx, "journey-animating")
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`window.klab.journeyDone`, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("the journey did not finish: %v", err)
	}
	visited, _ := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.klab.visited`))
	changes, _ := chromedp.Run(ctx, chromedp.Text("#hops"))
	shot(ctx, "journey")
	// The probe's hops, then the reply's: pod-a to pod-c over the
	// underlay (a point that missed the probe on a loaded machine is
	// allowed), and back.
	probeHops, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.klab.journey.hops.length`))
	if probeHops > len(visited) || !pathOK(visited[:probeHops], "pod-a/eth0", "pod-c/eth0") {
		t.Errorf("the animation went through %v, want pod-a/eth0 ... underlay ... pod-c/eth0 (%d probe hops)", visited, probeHops)
	}
	if !subsequence([]string{"pod-a/eth0", "node1/cni0", "node1/flannel.1", "node1/eth0", "underlay/node1", "underlay/node2", "node2/eth0", "node2/flannel.1", "node2/cni0", "pod-c/eth0"}, visited) {
		t.Logf("some capture points missed the probe: %v", visited)
	}
	for _, w := range []string{"dnat", "+vxlan", "-vxlan", "ttl"} {
		if !strings.Contains(changes, w) {
			t.Errorf("the journey's hops do not show %q:\n%s", w, changes)
		}
	}
	if after := labFingerprint(t, c, lab); after != before {
		t.Errorf("using the page changed the lab:\nbefore %s\nafter %s", before, after)
	}
	stopUI()
	c.must("destroy", lab)
	if left := c.leftovers(lab); len(left) > 0 {
		t.Errorf("left on the host after destroy: %v", left)
	}
}

// subsequence reports whether want appears in got in order.
func subsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func jsString(s string) string { return "'" + strings.ReplaceAll(s, "'", `\'`) + "'" }
