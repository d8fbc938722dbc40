package kms_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

const testUUID = "5c1d6a3e-1111-4c43-9d2e-6f1f2a3b4c5d"

type fixture struct {
	srv  *kmiptest.Server
	p    *kms.Protector
	logs *bytes.Buffer
}

func newProtector(t testing.TB, srv *kmiptest.Server, id *kmiptest.Identity, tm kms.Timing, logs *bytes.Buffer) *kms.Protector {
	t.Helper()
	ident, err := kms.TLSFiles(srv.CA.CertFile, id.CertFile, id.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	var log hclog.Logger
	if logs != nil {
		log = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	}
	p, err := kms.New(kms.Config{Identity: ident, Timing: tm, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t *testing.T) *fixture {
	t.Helper()
	srv := kmiptest.Start(t)
	var logs bytes.Buffer
	return &fixture{srv: srv, p: newProtector(t, srv, srv.Client, kms.Timing{Attempt: 10 * time.Second}, &logs), logs: &logs}
}

// enroll enrolls keyslot slot of testUUID and returns the passphrase and the token as
// the volume would store it.
func (f *fixture) enroll(t *testing.T, e kms.Enrollment) ([]byte, unlock.Token) {
	t.Helper()
	e.Protector = f.p
	if e.VolumeUUID == "" {
		e.VolumeUUID = testUUID
	}
	if e.Servers == nil {
		e.Servers = []string{f.srv.Addr}
	}
	en, err := e.Enroll(t.Context())
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	en.Token["keyslots"] = []string{itoa(e.Keyslot)}
	js, err := json.Marshal(en.Token)
	if err != nil {
		t.Fatal(err)
	}
	return en.Passphrase, unlock.Token{ID: 0, Type: kms.TokenType, Keyslots: []int{e.Keyslot}, JSON: js, VolumeUUID: e.VolumeUUID}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestKMIP runs the cases that share one pykmip-server (each with its own objects).
func TestKMIP(t *testing.T) {
	f := start(t)
	for _, c := range []struct {
		name string
		fn   func(*testing.T, *fixture)
	}{
		{"EnrollUnseal", testEnrollUnseal}, {"Failover", testFailover}, {"ForeignClientCert", testForeignClientCert},
		{"Revoked", testRevoked}, {"Rewrap", testRewrap}, {"AAD", testAAD}, {"CorruptToken", testCorruptToken},
		{"Canary", testCanary}, {"Blackhole", testBlackhole},
		{"Daemon", testDaemon},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, f) })
	}
}

func testEnrollUnseal(t *testing.T, f *fixture) {
	for _, mode := range []string{kms.ModeWrap, kms.ModeGet} {
		t.Run(mode, func(t *testing.T) {
			pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 1, Mode: mode})
			got, err := f.p.Unseal(t.Context(), tok)
			if err != nil {
				t.Fatalf("unseal: %v", err)
			}
			if !bytes.Equal(got, pass) {
				t.Fatalf("unsealed passphrase differs from the enrolled one")
			}
			t.Logf("token: %s", tok.JSON)
		})
	}
	// get mode with an existing 32-byte symmetric key the KMS team registered.
	t.Run("get-symmetric-key", func(t *testing.T) {
		uid, err := f.p.CreateKEK(t.Context(), []string{f.srv.Addr}, "operator-made-secret")
		if err != nil {
			t.Fatal(err)
		}
		pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 2, Mode: kms.ModeGet, KEK: uid})
		got, err := f.p.Unseal(t.Context(), tok)
		if err != nil || !bytes.Equal(got, pass) {
			t.Fatalf("unseal: %v", err)
		}
	})
	if n := f.srv.Requests(); n == 0 {
		t.Errorf("server log counted no requests")
	}
}

// admin returns a protector for the KMS administrator's operations (revoke), with the
// same client identity (PyKMIP lets only an object's owner act on it).
func (f *fixture) revoke(t *testing.T, uid string) {
	t.Helper()
	if err := f.p.Revoke(t.Context(), []string{f.srv.Addr}, uid, "disk decommissioned"); err != nil {
		t.Fatalf("revoke %s: %v", uid, err)
	}
}

func kekOf(t *testing.T, tok unlock.Token) string {
	t.Helper()
	pt, err := kms.ParseToken(tok.JSON)
	if err != nil {
		t.Fatal(err)
	}
	return pt.KEKUID
}

// TestFailover: the first server is dead (nothing listens), the second answers.
func testFailover(t *testing.T, f *fixture) {
	dead := kmiptest.DeadAddr(t)
	pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 2, Servers: []string{dead, f.srv.Addr}})
	got, err := f.p.Unseal(t.Context(), tok)
	if err != nil {
		t.Fatalf("unseal with the first server dead: %v", err)
	}
	if !bytes.Equal(got, pass) {
		t.Fatal("wrong passphrase")
	}
	if f.p.Metrics().Count(dead, "refused") == 0 || f.p.Metrics().Count(f.srv.Addr, "ok") == 0 {
		var b strings.Builder
		f.p.Metrics().WriteTo(&b)
		t.Errorf("metrics do not show the refused and the good server:\n%s", b.String())
	}
	var b strings.Builder
	f.p.Metrics().WriteTo(&b)
	if !strings.Contains(b.String(), `diskcryptd_kms_requests_total{server="`+dead+`",result="refused"}`) {
		t.Errorf("metrics text:\n%s", b.String())
	}
}

// staticProtector stands for the next token's protector (TPM, recovery) in the
// fall-through test: it opens its own token type only.
type staticProtector struct{ pass []byte }

func (staticProtector) Name() string { return "static" }
func (s staticProtector) Unseal(_ context.Context, tok unlock.Token) ([]byte, error) {
	if tok.Type != "static" {
		return nil, unlock.ErrNotMine
	}
	return bytes.Clone(s.pass), nil
}

// TestServerDown: every server is down; the KMS token fails within the token timeout
// with an error naming the server and why, and the next token opens the volume.
func TestServerDown(t *testing.T) {
	f := start(t)
	pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 1})
	f.srv.Stop()
	p := newProtector(t, f.srv, f.srv.Client, kms.Timing{Attempt: time.Second, Backoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}, nil)
	u := &unlock.Unlocker{Protectors: []unlock.Protector{p, staticProtector{[]byte("other")}}, TokenTimeout: 3 * time.Second}
	next := unlock.Token{ID: 1, Type: "static", Keyslots: []int{0}, VolumeUUID: testUUID}
	var opened []byte
	start := time.Now()
	rep, err := u.Unlock(t.Context(), []unlock.Token{tok, next}, func(_ context.Context, got []byte, _ []int) error {
		if bytes.Equal(got, pass) {
			return errors.New("the KMS token opened with the server down")
		}
		opened = bytes.Clone(got)
		return nil
	})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if string(opened) != "other" || rep.Winner().Token.ID != 1 {
		t.Fatalf("the next token did not open the volume: %+v", rep)
	}
	kerr := rep.Attempts[0].Err
	t.Logf("KMS token failed in %s (whole unlock %s): %v", rep.Attempts[0].Duration, took, kerr)
	if !errors.Is(kerr, kms.ErrUnreachable) || !strings.Contains(kerr.Error(), f.srv.Addr) || !strings.Contains(kerr.Error(), "refused") {
		t.Errorf("error does not say which server and why: %v", kerr)
	}
	// The bound itself (the token timeout cutting a server that never answers) is
	// testBlackhole's; here the refusals end the token's attempt on their own.
}

// TestBlackhole: a server that accepts TCP and never answers costs one attempt
// timeout per try, and the token timeout bounds the whole.
func testBlackhole(t *testing.T, f *fixture) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	_, tok := f.enroll(t, kms.Enrollment{Keyslot: 1})
	p, err := kms.New(kms.Config{Identity: identity(t, f.srv, f.srv.Client), Servers: []string{ln.Addr().String()},
		Timing: kms.Timing{Attempt: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = p.Unseal(ctx, tok)
	t.Logf("silent server: %v", err)
	if !errors.Is(err, kms.ErrUnreachable) || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("unseal against a silent server: %v", err)
	}
	if !strings.Contains(err.Error(), "no answer within 500ms") && !strings.Contains(err.Error(), "cut at the token deadline") {
		t.Errorf("the error does not say the server did not answer in time: %v", err)
	}
	if p.Metrics().Count(ln.Addr().String(), "timeout") == 0 {
		t.Errorf("no timed-out attempt counted")
	}
}

func identity(t *testing.T, srv *kmiptest.Server, id *kmiptest.Identity) *kms.TLSIdentity {
	t.Helper()
	ident, err := kms.TLSFiles(srv.CA.CertFile, id.CertFile, id.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ident
}

// TestForeignClientCert: a client certificate from another CA is refused by the
// server; a server certificate from another CA is refused by us.
func testForeignClientCert(t *testing.T, f *fixture) {
	_, tok := f.enroll(t, kms.Enrollment{Keyslot: 1})
	other := kmiptest.NewCA(t, t.TempDir(), "other")
	rogue := other.Issue(t, "diskcryptd-host", false)
	ident, err := kms.TLSFiles(f.srv.CA.CertFile, rogue.CertFile, rogue.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := kms.New(kms.Config{Identity: ident, Timing: kms.Timing{Attempt: 2 * time.Second}})
	_, err = p.Unseal(t.Context(), tok)
	t.Logf("foreign client certificate: %v", err)
	// Refused at TLS, and final: a rejected certificate is not retried.
	if err == nil || !errors.Is(err, kms.ErrUnreachable) || p.Metrics().Count(f.srv.Addr, "tls") != 1 {
		t.Errorf("a client certificate from another CA was not refused at TLS: %v", err)
	}
	// We trust only --kmip-ca: the real server is refused under another CA.
	ident2, err := kms.TLSFiles(other.CertFile, f.srv.Client.CertFile, f.srv.Client.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := kms.New(kms.Config{Identity: ident2, Timing: kms.Timing{Attempt: 2 * time.Second}})
	_, err = p2.Unseal(t.Context(), tok)
	t.Logf("server under an untrusted CA: %v", err)
	if err == nil || !strings.Contains(err.Error(), "certificate") || p2.Metrics().Count(f.srv.Addr, "tls") != 1 {
		t.Errorf("server certificate from an untrusted CA accepted, or retried: %v", err)
	}
}

// TestRevoked: after the KEK (wrap) or the secret (get) is revoked the token stays
// locked, with the KMS's reason, and the refusal is final (no retry rounds).
func testRevoked(t *testing.T, f *fixture) {
	for _, mode := range []string{kms.ModeWrap, kms.ModeGet} {
		t.Run(mode, func(t *testing.T) {
			_, tok := f.enroll(t, kms.Enrollment{Keyslot: 3, Mode: mode})
			f.revoke(t, kekOf(t, tok))
			_, err := f.p.Unseal(t.Context(), tok)
			t.Logf("revoked: %v", err)
			if err == nil || errors.Is(err, kms.ErrUnreachable) {
				t.Fatalf("unseal after revoke: %v", err)
			}
			if !strings.Contains(err.Error(), f.srv.Addr) || !strings.Contains(err.Error(), "after 1 attempts") {
				t.Errorf("error should name the server and not retry: %v", err)
			}
			if mode == kms.ModeGet && !errors.Is(err, kms.ErrNotActive) {
				t.Errorf("get mode: want ErrNotActive, got %v", err)
			}
			if mode == kms.ModeWrap && (!errors.Is(err, kms.ErrRefused) || !errors.Is(err, kms.ErrNotActive) || !strings.Contains(err.Error(), "KEK revoked")) {
				t.Errorf("wrap mode: want ErrRefused and ErrNotActive saying \"KEK revoked\", got %v", err)
			}
		})
	}
}

// TestRewrap: KEK rotation. The token is rewrapped to a new KEK, the old KEK is
// revoked, and the same passphrase still comes out; unknown members survive.
func testRewrap(t *testing.T, f *fixture) {
	pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 4})
	var m map[string]any
	json.Unmarshal(tok.JSON, &m)
	m["x-site"] = "dc2"
	tok.JSON, _ = json.Marshal(m)
	oldKEK := kekOf(t, tok)
	newKEK, err := f.p.CreateKEK(t.Context(), []string{f.srv.Addr}, "diskcryptd-kek-rotated")
	if err != nil {
		t.Fatal(err)
	}
	nt, err := f.p.Rewrap(t.Context(), tok.JSON, testUUID, newKEK)
	if err != nil {
		t.Fatalf("rewrap: %v", err)
	}
	f.revoke(t, oldKEK)
	js, _ := nt.MarshalJSON()
	if !strings.Contains(string(js), `"x-site":"dc2"`) || nt.KEKUID != newKEK {
		t.Errorf("rewrapped token: %s", js)
	}
	got, err := f.p.Unseal(t.Context(), unlock.Token{ID: 0, Type: kms.TokenType, Keyslots: tok.Keyslots, JSON: js, VolumeUUID: testUUID})
	if err != nil {
		t.Fatalf("unseal after rewrap and revoke of the old KEK: %v", err)
	}
	if !bytes.Equal(got, pass) {
		t.Fatal("rewrap changed the secret")
	}
	if _, err := f.p.Unseal(t.Context(), tok); !errors.Is(err, kms.ErrRefused) {
		t.Errorf("the old token still unseals after its KEK was revoked: %v", err)
	}
}

// TestAAD: a token copied to another volume, or rebound to another keyslot, does not
// decrypt.
func testAAD(t *testing.T, f *fixture) {
	_, tok := f.enroll(t, kms.Enrollment{Keyslot: 1})
	copied := tok
	copied.VolumeUUID = "0e3f6c1e-5a7b-4c43-9d2e-6f1f2a3b4c5d"
	if _, err := f.p.Unseal(t.Context(), copied); !errors.Is(err, kms.ErrRefused) {
		t.Errorf("token on another volume: %v", err)
	} else {
		t.Logf("copied to another volume: %v", err)
	}
	moved := tok
	moved.Keyslots = []int{2}
	if _, err := f.p.Unseal(t.Context(), moved); !errors.Is(err, kms.ErrRefused) {
		t.Errorf("token bound to another keyslot: %v", err)
	}
}

// TestCorruptToken: tampered or malformed fields are refused, by the parser or by the
// KMS's GCM check, never with a wrong secret.
func testCorruptToken(t *testing.T, f *fixture) {
	pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 1})
	var good map[string]any
	json.Unmarshal(tok.JSON, &good)
	flip := func(field string) func(m map[string]any) {
		return func(m map[string]any) {
			b, _ := base64.StdEncoding.DecodeString(m[field].(string))
			b[0] ^= 1
			m[field] = base64.StdEncoding.EncodeToString(b)
		}
	}
	for _, c := range []struct {
		name   string
		edit   func(m map[string]any)
		parser bool // refused before any request
	}{
		{"flipped wrapped_secret", flip("wrapped_secret"), false},
		{"flipped tag", flip("tag"), false},
		{"flipped iv", flip("iv"), false},
		{"other kek", func(m map[string]any) { m["kek_uid"] = "9999" }, false},
		{"short iv", func(m map[string]any) { m["iv"] = "AAAA" }, true},
		{"iv not base64", func(m map[string]any) { m["iv"] = "!!" }, true},
		{"no servers", func(m map[string]any) { m["servers"] = []string{} }, true},
		{"bad server", func(m map[string]any) { m["servers"] = []string{"localhost"} }, true},
		{"version 2", func(m map[string]any) { m["version"] = 2 }, true},
		{"mode", func(m map[string]any) { m["mode"] = "magic" }, true},
		{"algorithm", func(m map[string]any) { m["algorithm"] = "AES-128-CBC" }, true},
		{"aad recipe", func(m map[string]any) { m["aad"] = "none" }, true},
		{"no kek", func(m map[string]any) { delete(m, "kek_uid") }, true},
		{"servers not a list", func(m map[string]any) { m["servers"] = "127.0.0.1:1" }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := map[string]any{}
			for k, v := range good {
				m[k] = v
			}
			c.edit(m)
			bad := tok
			bad.JSON, _ = json.Marshal(m)
			before := f.srv.Requests()
			got, err := f.p.Unseal(t.Context(), bad)
			if err == nil {
				t.Fatalf("corrupt token unsealed (same secret: %v)", bytes.Equal(got, pass))
			}
			if c.parser != errors.Is(err, kms.ErrToken) {
				t.Errorf("ErrToken = %v, want %v: %v", errors.Is(err, kms.ErrToken), c.parser, err)
			}
			if c.parser && f.srv.Requests() != before {
				t.Errorf("a malformed token reached the server")
			}
		})
	}
}

// TestCanary: the secret (raw or as the passphrase) appears in no log line, no error
// and not in the token.
func testCanary(t *testing.T, f *fixture) {
	pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 1})
	secret, _ := base64.StdEncoding.DecodeString(string(pass))
	_, err1 := f.p.Unseal(t.Context(), tok)
	bad := tok
	bad.VolumeUUID = "other"
	_, err2 := f.p.Unseal(t.Context(), bad)
	f.revoke(t, kekOf(t, tok))
	_, err3 := f.p.Unseal(t.Context(), tok)
	var m strings.Builder
	f.p.Metrics().WriteTo(&m)
	hay := [][]byte{f.logs.Bytes(), tok.JSON, []byte(fmt.Sprint(err1, err2, err3)), []byte(m.String())}
	needles := [][]byte{pass, secret, []byte(hex.EncodeToString(secret)), []byte(base64.RawURLEncoding.EncodeToString(secret))}
	for i, h := range hay {
		for j, n := range needles {
			if bytes.Contains(h, n) {
				t.Errorf("haystack %d carries the secret (form %d)", i, j)
			}
		}
	}
	if f.logs.Len() == 0 || !strings.Contains(f.logs.String(), "KMS released the secret") {
		t.Errorf("no log was captured, the canary check is empty:\n%s", f.logs.String())
	}
}
