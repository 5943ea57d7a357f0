package ui

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klab-dev/klab/pkg/cluster"
	"github.com/klab-dev/klab/pkg/graph"
	"github.com/klab-dev/klab/pkg/inspect"
	"github.com/klab-dev/klab/pkg/nat"
	"github.com/klab-dev/klab/pkg/netns"
	"github.com/klab-dev/klab/pkg/topo"
)

//go:embed static
var static embed.FS

// CookieName holds the token after the first request.
const CookieName = "klab_ui_token"

// JourneyFunc runs one journey probe from a pod or node to a target and
// returns the drawn journey; it is the page's only action.
type JourneyFunc func(ctx context.Context, from, target string) (*graph.Journey, error)

// Server serves one lab's page.
type Server struct {
	StateDir string
	Lab      string
	Token    string
	Journey  JourneyFunc
	// Poll is how often the state file is checked (default 200ms); the
	// whole kernel is read again every KernelPoll (default 1s, or five
	// times as long as the last full read took) to catch damage made
	// behind klab's back.
	Poll, KernelPoll time.Duration

	loopback bool

	mu      sync.Mutex
	version int
	hash    string
	topo    *topo.Topology
	svg     string
	subs    map[chan int]bool
	snaps   map[string]*inspect.Snapshot // by namespace, as last read
	readAt  map[string]time.Time         // when each snapshot's read started
	lab     *cluster.Lab                 // the newest state loaded
	sigs    map[string]string            // each object's state in lab
	// loadedAt is when lab was loaded; fullEvery the pause between two
	// full kernel reads.
	loadedAt  time.Time
	problem   string // why the state cannot be read now (the lab is gone)
	fullEvery time.Duration
	probing   sync.Mutex
}

// NewToken returns a random token (128 bits, hex).
func NewToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Serve listens on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Poll <= 0 {
		s.Poll = 200 * time.Millisecond
	}
	if s.KernelPoll <= 0 {
		s.KernelPoll = time.Second
	}
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		s.loopback = a.IP.IsLoopback()
	}
	s.subs = map[chan int]bool{}
	if err := s.refresh(true); err != nil {
		return err
	}
	go s.watch(ctx)
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// refresh reads the lab from its state and the kernel, and bumps the
// version when the picture changed. A full refresh reads every namespace;
// otherwise only the namespaces of objects whose state changed (a new pod
// and its node, a new node and the underlay) are read again, so a pod
// added to a 1000-pod lab shows at once. A full refresh runs beside the
// incremental ones (see watch); a namespace's snapshot is replaced only by
// one read after it, and the picture always uses the newest state loaded.
func (s *Server) refresh(full bool) error {
	start := time.Now()
	l, err := cluster.Load(s.StateDir, s.Lab)
	if err != nil {
		// The lab was destroyed (or its state broke) under the page:
		// say so, keeping the last picture.
		s.mu.Lock()
		defer s.mu.Unlock()
		if msg := err.Error(); s.problem != msg && s.topo != nil {
			s.problem, s.hash = msg, ""
			s.bump()
		}
		return err
	}
	sigs := map[string]string{}
	sig := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	under, ext := netns.Name(l.Name, cluster.UnderlayName), netns.Name(l.Name, cluster.ExternalName)
	all := []string{under, ext}
	for _, n := range l.Nodes {
		ns := netns.Name(l.Name, n.Name)
		all, sigs[ns] = append(all, ns), sig(n)
	}
	for _, p := range l.Pods {
		ns := netns.Name(l.Name, p.Name)
		all, sigs[ns] = append(all, ns), sig(p)
	}
	read := all
	s.mu.Lock()
	old := s.sigs
	s.mu.Unlock()
	if !full && old != nil {
		set := map[string]bool{under: true, ext: true}
		for _, p := range l.Pods {
			if ns := netns.Name(l.Name, p.Name); old[ns] != sigs[ns] {
				set[ns], set[netns.Name(l.Name, p.Node)] = true, true
			}
		}
		for _, n := range l.Nodes {
			if ns := netns.Name(l.Name, n.Name); old[ns] != sigs[ns] {
				set[ns] = true
			}
		}
		read = nil
		for ns := range set {
			read = append(read, ns)
		}
	}
	fresh := topo.Snapshots(read, 16)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snaps == nil {
		s.snaps, s.readAt = map[string]*inspect.Snapshot{}, map[string]time.Time{}
	}
	for _, ns := range read {
		if start.After(s.readAt[ns]) {
			s.snaps[ns], s.readAt[ns] = fresh[ns], start // nil: gone
		}
	}
	if start.After(s.loadedAt) {
		s.lab, s.sigs, s.loadedAt = l, sigs, start
	}
	t := topo.Build(s.lab, s.snaps)
	var b strings.Builder
	if err := graph.SVG(&b, t); err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(b.String()))
	h := hex.EncodeToString(sum[:])
	if h == s.hash {
		return nil
	}
	s.hash, s.topo, s.svg, s.problem = h, t, b.String(), ""
	s.bump()
	return nil
}

// bump publishes a new version to the pages listening (s.mu held).
func (s *Server) bump() {
	s.version++
	for c := range s.subs {
		select {
		case c <- s.version:
		default:
		}
	}
}

// watch polls the state file cheaply (its modification time and size),
// refreshing the changed objects at once, and reads the whole kernel
// every KernelPoll in the background, to catch what changed behind
// klab's back.
func (s *Server) watch(ctx context.Context) {
	var last string
	tick := time.NewTicker(s.Poll)
	defer tick.Stop()
	var fullRunning atomic.Bool
	lastKernel, every := time.Now(), s.KernelPoll
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st, err := os.Stat(cluster.StateFile(s.StateDir, s.Lab))
		cur := "gone"
		if err == nil {
			cur = fmt.Sprint(st.ModTime().UnixNano(), st.Size())
		}
		if cur != last {
			last = cur
			s.refresh(false)
		}
		if time.Since(lastKernel) >= every && fullRunning.CompareAndSwap(false, true) {
			lastKernel = time.Now()
			go func() {
				defer fullRunning.Store(false)
				t0 := time.Now()
				s.refresh(true)
				// A big lab takes a while to read: leave the machine
				// at least four times that between two full reads.
				s.mu.Lock()
				s.fullEvery = max(s.KernelPoll, 5*time.Since(t0))
				s.mu.Unlock()
			}()
		}
		s.mu.Lock()
		if s.fullEvery > 0 {
			every = s.fullEvery
		}
		s.mu.Unlock()
	}
}

// Handler is the page's HTTP handler, every route behind the guard.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	sub, _ := fs.Sub(static, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(sub)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		b, _ := static.ReadFile("static/index.html")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(b)
	})
	mux.HandleFunc("GET /api/topology", s.topology)
	mux.HandleFunc("GET /api/svg", s.picture)
	mux.HandleFunc("GET /api/events", s.events)
	mux.HandleFunc("GET /api/object", s.object)
	mux.HandleFunc("POST /api/journey", s.journey)
	return s.guard(mux)
}

// guard enforces the security model (see the package comment).
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
		w.Header().Set("Referrer-Policy", "no-referrer")
		if s.loopback && !loopbackHost(r.Host) {
			http.Error(w, "klab ui answers only to 127.0.0.1 or localhost (it listens on loopback)", http.StatusForbidden)
			return
		}
		if q := r.URL.Query().Get("token"); q != "" && r.Method == http.MethodGet {
			if !s.tokenOK(q) {
				http.Error(w, "wrong token: use the URL klab ui printed", http.StatusForbidden)
				return
			}
			http.SetCookie(w, &http.Cookie{Name: CookieName, Value: s.Token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			// Drop the token from the address bar (and from history).
			u := *r.URL
			v := u.Query()
			v.Del("token")
			u.RawQuery = v.Encode()
			http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
			return
		}
		c, err := r.Cookie(CookieName)
		if err != nil || !s.tokenOK(c.Value) {
			http.Error(w, "this page needs the token klab ui printed with its URL", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !sameOrigin(r) {
				http.Error(w, "cross-origin request refused (CSRF): klab ui runs journeys only for its own page", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) tokenOK(v string) bool {
	return s.Token != "" && subtle.ConstantTimeCompare([]byte(v), []byte(s.Token)) == 1
}

func loopbackHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// sameOrigin accepts a request whose Origin is this server, or whose
// Sec-Fetch-Site says same-origin; one with neither is refused, since
// every browser sends at least one of them on a POST.
func sameOrigin(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host && (u.Scheme == "http" || u.Scheme == "https")
	}
	return r.Header.Get("Sec-Fetch-Site") == "same-origin"
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func (s *Server) topology(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	writeJSON(w, map[string]any{"version": s.version, "topology": s.topo, "problem": s.problem})
}

// picture is the SVG of the version asked for (the current one).
func (s *Server) picture(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	svg, v := s.svg, s.version
	s.mu.Unlock()
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Klab-Version", fmt.Sprint(v))
	io.WriteString(w, svg)
}

// events pushes the topology's version whenever it changes.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	c := make(chan int, 1)
	s.mu.Lock()
	s.subs[c] = true
	v := s.version
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, c)
		s.mu.Unlock()
	}()
	fmt.Fprintf(w, "event: topology\ndata: %d\n\n", v)
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case v := <-c:
			fmt.Fprintf(w, "event: topology\ndata: %d\n\n", v)
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		}
		fl.Flush()
	}
}

// Object is a node's or pod's kernel state, as the page shows it.
type Object struct {
	Name     string              `json:"name"`
	NS       string              `json:"ns"`
	Sections map[string][]string `json:"sections"`
	Order    []string            `json:"order"`
}

// object reads one namespace of the lab: links, addresses, routes,
// neighbours, FDB, and the lab's iptables rules in it.
func (s *Server) object(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	s.mu.Lock()
	t := s.topo
	s.mu.Unlock()
	known := name == cluster.UnderlayName || name == cluster.ExternalName
	for _, n := range t.Nodes {
		known = known || n.Name == name
		for _, p := range n.Pods {
			known = known || p.Name == name
		}
	}
	if !known {
		http.Error(w, fmt.Sprintf("lab %s has no node or pod named %q", s.Lab, name), http.StatusNotFound)
		return
	}
	ns := netns.Name(s.Lab, name)
	h, err := netns.Handle(ns)
	if err != nil {
		http.Error(w, fmt.Sprintf("namespace %s cannot be opened: %v", ns, err), http.StatusNotFound)
		return
	}
	defer h.Close()
	snap, err := inspect.Take(h)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	o := Object{Name: name, NS: ns, Sections: snap.Lines(), Order: append([]string(nil), inspect.Kinds...)}
	if chains, err := nat.ReadOwned(ns, s.Lab); err == nil && len(chains) > 0 {
		for _, c := range chains {
			for _, rule := range c.Rules {
				o.Sections["rules"] = append(o.Sections["rules"], fmt.Sprintf("-t %s %s", c.Table, rule))
			}
		}
		o.Order = append(o.Order, "rules")
	}
	writeJSON(w, o)
}

// journey runs one probe; one at a time, so two clicks do not capture
// each other's packets.
func (s *Server) journey(w http.ResponseWriter, r *http.Request) {
	var req struct{ From, Target string }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil || req.From == "" || req.Target == "" {
		http.Error(w, `a journey needs {"from": POD-OR-NODE, "target": TARGET}`, http.StatusBadRequest)
		return
	}
	if s.Journey == nil {
		http.Error(w, "journeys are not available", http.StatusNotImplemented)
		return
	}
	if !s.probing.TryLock() {
		http.Error(w, "a journey probe is already running: wait for it", http.StatusConflict)
		return
	}
	defer s.probing.Unlock()
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	j, err := s.Journey(ctx, req.From, req.Target)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	writeJSON(w, j)
}
