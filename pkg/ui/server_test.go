package ui

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/klab-dev/klab/pkg/graph"
)

// TestGuard checks the security model without a lab: the token, the
// cookie, the loopback Host check, and the same-origin rule for the POST.
func TestGuard(t *testing.T) {
	probed := 0
	s := &Server{Lab: "x", Token: "t0ken", loopback: true, subs: map[chan int]bool{},
		Journey: func(ctx context.Context, from, target string) (*graph.Journey, error) {
			probed++
			return &graph.Journey{From: from, Target: target, Probe: "reply"}, nil
		}}
	h := s.Handler()
	cookie := &http.Cookie{Name: CookieName, Value: "t0ken"}
	body := `{"from":"pod-a","target":"pod-b"}`
	for _, c := range []struct {
		name, method, target, host string
		cookie                     *http.Cookie
		hdr                        map[string]string
		want                       int
	}{
		{"page without token", "GET", "/", "127.0.0.1:1", nil, nil, 403},
		{"api without token", "GET", "/api/topology", "127.0.0.1:1", nil, nil, 403},
		{"static without token", "GET", "/static/app.js", "127.0.0.1:1", nil, nil, 403},
		{"wrong token", "GET", "/?token=nope", "127.0.0.1:1", nil, nil, 403},
		{"wrong cookie", "GET", "/", "127.0.0.1:1", &http.Cookie{Name: CookieName, Value: "nope"}, nil, 403},
		{"token sets the cookie", "GET", "/?token=t0ken", "127.0.0.1:1", nil, nil, 303},
		{"cookie", "GET", "/", "127.0.0.1:1", cookie, nil, 200},
		{"static with cookie", "GET", "/static/app.js", "localhost:1", cookie, nil, 200},
		{"topology", "GET", "/api/topology", "127.0.0.1:1", cookie, nil, 200},
		{"rebinding: foreign Host", "GET", "/", "evil.example:1", cookie, nil, 403},
		{"POST without token", "POST", "/api/journey", "127.0.0.1:1", nil, map[string]string{"Origin": "http://127.0.0.1:1"}, 403},
		{"POST token in URL only", "POST", "/api/journey?token=t0ken", "127.0.0.1:1", nil, map[string]string{"Origin": "http://127.0.0.1:1"}, 403},
		{"POST other origin", "POST", "/api/journey", "127.0.0.1:1", cookie, map[string]string{"Origin": "http://evil.example"}, 403},
		{"POST cross-site fetch", "POST", "/api/journey", "127.0.0.1:1", cookie, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"POST no origin at all", "POST", "/api/journey", "127.0.0.1:1", cookie, nil, 403},
		{"POST same origin", "POST", "/api/journey", "127.0.0.1:1", cookie, map[string]string{"Origin": "http://127.0.0.1:1"}, 200},
		{"POST same-origin fetch", "POST", "/api/journey", "127.0.0.1:1", cookie, map[string]string{"Sec-Fetch-Site": "same-origin"}, 200},
		{"PUT", "PUT", "/api/topology", "127.0.0.1:1", cookie, map[string]string{"Origin": "http://127.0.0.1:1"}, 405},
		{"DELETE", "DELETE", "/api/journey", "127.0.0.1:1", cookie, map[string]string{"Origin": "http://127.0.0.1:1"}, 405},
		{"unknown path", "GET", "/api/exec", "127.0.0.1:1", cookie, nil, 404},
	} {
		req := httptest.NewRequest(c.method, c.target, strings.NewReader(body))
		req.Host = c.host
		if c.cookie != nil {
			req.AddCookie(c.cookie)
		}
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("%s: %s %s: status %d, want %d (%s)", c.name, c.method, c.target, rec.Code, c.want, strings.TrimSpace(rec.Body.String()))
		}
		if c.name == "token sets the cookie" {
			sc := rec.Header().Get("Set-Cookie")
			if !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Strict") || rec.Header().Get("Location") != "/" {
				t.Errorf("token: Set-Cookie %q, Location %q", sc, rec.Header().Get("Location"))
			}
		}
	}
	if probed != 2 {
		t.Errorf("%d probes ran, want 2 (only the same-origin POSTs with the token)", probed)
	}
}

func TestNoTokenNoEntry(t *testing.T) {
	s := &Server{Lab: "x", subs: map[chan int]bool{}}
	req := httptest.NewRequest("GET", "/?token=", nil)
	req.AddCookie(&http.Cookie{Name: CookieName, Value: ""})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != 403 {
		t.Errorf("a server without a token let an empty one in: %d", rec.Code)
	}
	if a, b := NewToken(), NewToken(); len(a) != 32 || a == b {
		t.Errorf("tokens %q %q", a, b)
	}
}
