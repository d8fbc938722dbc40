package clevis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/tang"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

func tangCfg(s *tangtest.Server) string {
	return fmt.Sprintf(`{"url":%q,"thp":%q}`, s.URL, s.SigningThumbprints()[0])
}

func testPins(t *testing.T) *Pins {
	return &Pins{
		Tang:    &tang.Client{Timeout: 5 * time.Second, Attempts: 2, Backoff: 50 * time.Millisecond},
		Trusted: func(url, how string, thp []string) { t.Logf("trusted %s (%s): %v", url, how, thp) },
	}
}

// TestTangInterop: what we bind, clevis opens; what clevis binds, we open.
func TestTangInterop(t *testing.T) {
	srv := tangtest.Start(t)
	ctx := context.Background()
	pins := testPins(t)
	img, key := newVolume(t)
	slot := enroll(t, img, key, pins, "tang", tangCfg(srv))
	clevisOpens(t, nil, img, slot)
	if err := ourOpen(t, ctx, img, &Protector{Pins: pins}); err != nil {
		t.Fatalf("our own tang token: %v", err)
	}

	img2, key2 := newVolume(t)
	clevisBind(t, nil, img2, key2, "tang", fmt.Sprintf(`{"url":%q}`, srv.URL))
	if err := ourOpen(t, ctx, img2, &Protector{Pins: pins}); err != nil {
		t.Fatalf("clevis's tang token: %v", err)
	}
	// And not with the server gone: the error names the URL.
	srv.Stop()
	err := ourOpen(t, ctx, img2, &Protector{Pins: pins})
	if err == nil || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("with tangd stopped: %v, want an error naming %s", err, srv.URL)
	}
	t.Logf("server down: %v", err)
}

// TestSSSTwoTangs: sss over two Tang servers, t=1 and t=2, both directions, and
// with one server down.
func TestSSSTwoTangs(t *testing.T) {
	a, b := tangtest.Start(t), tangtest.Start(t)
	ctx := context.Background()
	pins := testPins(t)
	p := &Protector{Pins: pins}
	cfg := func(t int) string {
		return fmt.Sprintf(`{"t":%d,"pins":{"tang":[%s,%s]}}`, t, tangCfg(a), tangCfg(b))
	}
	type vol struct{ img, key string }
	ours, theirs := map[int]vol{}, map[int]vol{}
	for _, th := range []int{1, 2} {
		img, key := newVolume(t)
		slot := enroll(t, img, key, pins, "sss", cfg(th))
		clevisOpens(t, nil, img, slot)
		if err := ourOpen(t, ctx, img, p); err != nil {
			t.Fatalf("t=%d ours: %v", th, err)
		}
		ours[th] = vol{img, key}
		img2, key2 := newVolume(t)
		clevisBind(t, nil, img2, key2, "sss", fmt.Sprintf(`{"t":%d,"pins":{"tang":[{"url":%q},{"url":%q}]}}`, th, a.URL, b.URL))
		if err := ourOpen(t, ctx, img2, p); err != nil {
			t.Fatalf("t=%d clevis's: %v", th, err)
		}
		theirs[th] = vol{img2, key2}
	}
	b.Stop()
	for _, v := range []vol{ours[1], theirs[1]} {
		if err := ourOpen(t, ctx, v.img, p); err != nil {
			t.Errorf("t=1 with one server down: %v", err)
		}
	}
	clevisOpens(t, nil, ours[1].img, 1)
	for _, v := range []vol{ours[2], theirs[2]} {
		err := ourOpen(t, ctx, v.img, p)
		if err == nil || !strings.Contains(err.Error(), b.URL) || !strings.Contains(err.Error(), "t=2") {
			t.Errorf("t=2 with %s down: %v, want an error naming it", b.URL, err)
		}
	}
}

// TestSSSTPM2AndTang: sss(tpm2 AND tang), both directions, with swtpm.
func TestSSSTPM2AndTang(t *testing.T) {
	srv := tangtest.Start(t)
	dev := tpmtest.StartSwtpm(t)
	env := []string{"TPM2TOOLS_TCTI=swtpm:path=" + strings.TrimPrefix(dev, "swtpm:path=")}
	ctx := context.Background()
	pins := testPins(t)
	pins.TPM2 = &TPMDevice{Device: dev}
	p := &Protector{Pins: pins}
	img, key := newVolume(t)
	slot := enroll(t, img, key, pins, "sss", fmt.Sprintf(`{"t":2,"pins":{"tpm2":{"pcr_ids":"7"},"tang":[%s]}}`, tangCfg(srv)))
	clevisOpens(t, env, img, slot)
	flushTPM(t, env)
	if err := ourOpen(t, ctx, img, p); err != nil {
		t.Fatalf("ours: %v", err)
	}
	img2, key2 := newVolume(t)
	clevisBind(t, env, img2, key2, "sss", fmt.Sprintf(`{"t":2,"pins":{"tpm2":{"pcr_ids":"7"},"tang":[{"url":%q}]}}`, srv.URL))
	flushTPM(t, env)
	if err := ourOpen(t, ctx, img2, p); err != nil {
		t.Fatalf("clevis's: %v", err)
	}
	// A tpm2-only clevis token, read by this package (not package tpm).
	img3, key3 := newVolume(t)
	clevisBind(t, env, img3, key3, "tpm2", `{"pcr_ids":"7"}`)
	flushTPM(t, env)
	if err := ourOpen(t, ctx, img3, p); err != nil {
		t.Fatalf("clevis's tpm2: %v", err)
	}
	// A tpm2-only token of ours, opened by clevis.
	img4, key4 := newVolume(t)
	slot4 := enroll(t, img4, key4, pins, "tpm2", `{"pcr_ids":"7"}`)
	clevisOpens(t, env, img4, slot4)
	flushTPM(t, env)

	srv.Stop()
	if err := ourOpen(t, ctx, img, p); err == nil || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("tang down: %v", err)
	}
}

// TestTrustOnBind: binding needs a pinned thumbprint or explicit trust on first use.
func TestTrustOnBind(t *testing.T) {
	srv := tangtest.Start(t)
	ctx := context.Background()
	cfg := fmt.Sprintf(`{"url":%q}`, srv.URL)
	p := &Pins{}
	if _, err := p.Encrypt(ctx, "tang", []byte(cfg), []byte("x")); !errors.Is(err, ErrNoTrust) {
		t.Fatalf("no thp: %v, want ErrNoTrust", err)
	}
	p.TrustFirstUse = true
	if _, err := p.Encrypt(ctx, "tang", []byte(cfg), []byte("x")); !errors.Is(err, ErrNoTrust) {
		t.Fatalf("trust first use with nobody told: %v, want ErrNoTrust", err)
	}
	var told []string
	p.Trusted = func(url, how string, thp []string) { told = append(told, how+":"+strings.Join(thp, ",")) }
	if _, err := p.Encrypt(ctx, "tang", []byte(cfg), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if want := "first use:" + srv.SigningThumbprints()[0]; len(told) != 1 || told[0] != want {
		t.Fatalf("told %q, want %q", told, want)
	}
	wrong := fmt.Sprintf(`{"url":%q,"thp":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`, srv.URL)
	if _, err := (&Pins{}).Encrypt(ctx, "tang", []byte(wrong), []byte("x")); !errors.Is(err, tang.ErrUntrusted) {
		t.Fatalf("wrong thp: %v, want ErrUntrusted", err)
	}
}

// TestRegenAfterRotation: after tangd-rotate-keys, regen trusts the new
// advertisement through the old key; a server with unknown keys is refused unless a
// thumbprint vouches for it.
func TestRegenAfterRotation(t *testing.T) {
	srv := tangtest.Start(t)
	ctx := context.Background()
	pins := testPins(t)
	compact, err := pins.Encrypt(ctx, "sss", []byte(fmt.Sprintf(`{"t":1,"pins":{"tang":[%s]}}`, tangCfg(srv))), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := ParseJWE([]byte(compact))
	if err != nil {
		t.Fatal(err)
	}
	oldKid := j.Children[0].KeyID
	srv.Rotate()
	srv.Stop()
	srv.Serve()
	re, err := pins.Regen(ctx, j, "")
	if err != nil {
		t.Fatalf("regen after rotation: %v", err)
	}
	j2, err := ParseJWE([]byte(re))
	if err != nil {
		t.Fatal(err)
	}
	if j2.Children[0].KeyID == oldKid {
		t.Fatalf("regen kept the rotated-out exchange key %s", oldKid)
	}
	pt, err := pins.Decrypt(ctx, j2)
	if err != nil || string(pt) != "secret" {
		t.Fatalf("regenerated token: %q, %v", pt, err)
	}

	// A server whose keys the token never saw: its old keys are gone.
	other := tangtest.Start(t)
	single, err := pins.Encrypt(ctx, "tang", []byte(tangCfg(srv)), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := ParseJWE([]byte(single))
	js.Clevis.Tang.URL = other.URL // the token now points at a server with unknown keys
	if _, err := pins.reencrypt(ctx, js, []byte("secret"), ""); !errors.Is(err, tang.ErrUntrusted) {
		t.Fatalf("unknown keys: %v, want ErrUntrusted", err)
	}
	if _, err := pins.reencrypt(ctx, js, []byte("secret"), other.SigningThumbprints()[0]); err != nil {
		t.Fatalf("unknown keys vouched for by thumbprint: %v", err)
	}
}

// TestDeadServer: a server that accepts and never answers costs at most the
// caller's deadline, and the error names the URL and the reason.
func TestDeadServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	live := tangtest.Start(t)
	pins := testPins(t)
	compact, err := pins.Encrypt(context.Background(), "tang", []byte(tangCfg(live)), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	j, _ := ParseJWE([]byte(compact))
	dead := "http://" + l.Addr().String()
	j.Clevis.Tang.URL = dead
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pins.Tang = &tang.Client{Timeout: time.Hour, Attempts: 3}
	_, err = pins.Decrypt(ctx, j)
	var te *tang.Error
	if !errors.As(err, &te) || te.URL != dead || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dead server: %v, want a tang.Error for %s wrapping the deadline", err, dead)
	}
	t.Logf("dead server: %v", err)
}
