package tang

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRecMalformedAnswers: a server answering /rec with garbage, a point off the
// curve, the wrong curve, an endless body or an error status gets a clear error
// naming its URL, and never a hang (each attempt has its deadline).
func TestRecMalformedAnswers(t *testing.T) {
	srvKey, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	epk, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"garbage", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) }, "not a JWK"},
		{"wrong curve", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}`))
		}, "want EC/P-521"},
		{"off the curve", func(w http.ResponseWriter, r *http.Request) {
			c := strings.Repeat("A", 88)
			w.Write([]byte(`{"kty":"EC","crv":"P-521","x":"` + c + `","y":"` + c + `"}`))
		}, "not on the curve"},
		{"huge", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, maxAnswer+10)) }, "larger than"},
		{"endless", func(w http.ResponseWriter, r *http.Request) {
			for r.Context().Err() == nil {
				w.Write([]byte(" "))
				w.(http.Flusher).Flush()
				time.Sleep(10 * time.Millisecond)
			}
		}, "deadline"},
		{"unknown kid", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, "no key of that thumbprint"},
		{"server error", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }, "500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := httptest.NewServer(tc.handler)
			defer s.Close()
			c := &Client{Timeout: 300 * time.Millisecond, Attempts: 2, Backoff: 10 * time.Millisecond}
			_, err := c.Recover(context.Background(), s.URL, "kid", &srvKey.PublicKey, &epk.PublicKey)
			var te *Error
			if !errors.As(err, &te) || te.URL != s.URL || te.Op != "rec" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want a tang.Error for %s saying %q", err, s.URL, tc.want)
			}
		})
	}
}

// TestNoRedirects: a Tang URL that answers with a redirect is not followed, as
// clevis's curl does not follow it: the request fails with the status.
func TestNoRedirects(t *testing.T) {
	adv, err := os.ReadFile("testdata/adv.jws")
	if err != nil {
		t.Fatal(err)
	}
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(adv) }))
	defer target.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	c := &Client{Timeout: 5 * time.Second}
	if _, err := c.Adv(context.Background(), target.URL, ""); err != nil {
		t.Fatalf("the target itself: %v", err)
	}
	_, err = c.Adv(context.Background(), redirect.URL, "")
	if !errors.Is(err, ErrStatus) || !strings.Contains(err.Error(), "307") {
		t.Fatalf("redirected: %v; want ErrStatus 307", err)
	}
}
