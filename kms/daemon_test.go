package kms_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// enrollImage formats a LUKS2 image and enrolls a KMIP protector on it (in the
// protector's keyslot, as "enroll kmip" does); it returns the path and the KEK UID.
func enrollImage(t *testing.T, f *fixture, dir, name string) (string, string) {
	t.Helper()
	ctx := t.Context()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 20<<20); err != nil {
		t.Fatal(err)
	}
	kdf := luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}
	v, vk, err := luks2.FormatFile(ctx, p, []byte("pw"), &luks2.FormatOptions{Keyslot: kdf})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	defer vk.Wipe()
	e := &kms.Enrollment{Protector: f.p, VolumeUUID: v.Metadata().UUID, Keyslot: 1, Servers: []string{f.srv.Addr}}
	en, err := e.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := json.Marshal(en.Token)
	if _, _, err := v.AddKeyslotWithToken(ctx, vk, en.Passphrase, 1, &kdf, tok, luks2.AnyToken); err != nil {
		t.Fatal(err)
	}
	return p, e.Created
}

// TestDaemon runs the daemon over two image files with KMIP tokens, one whose KEK was
// revoked: the first's key is recovered (mapping then fails: an image is not a block
// device), the second stays locked with the KMS's reason; the audit log names server,
// KEK and correlation value; /metrics carries the KMS counters.
func testDaemon(t *testing.T, shared *fixture) {
	// A protector of its own, so the metrics count this test's requests only.
	f := &fixture{srv: shared.srv, p: newProtector(t, shared.srv, shared.srv.Client, kms.Timing{Attempt: 10 * time.Second}, nil)}
	dir := t.TempDir()
	good, goodKEK := enrollImage(t, f, dir, "good.img")
	revoked, kek := enrollImage(t, f, dir, "revoked.img")
	f.revoke(t, kek)
	logPath := filepath.Join(dir, "audit.jsonl")
	d := &daemon.Daemon{
		Config: &daemon.Config{TokenTimeout: 10 * time.Second, DeviceTimeout: time.Second, Volumes: []daemon.VolumeConfig{
			{Name: "good", Device: good, MeasurePCR: -1}, {Name: "revoked", Device: revoked, MeasurePCR: -1}}},
		Protectors: func(daemon.VolumeConfig) []unlock.Protector { return []unlock.Protector{f.p} },
		Audit:      audit.New(audit.Options{Path: logPath, Actor: "daemon", NoJournal: true}),
		Metrics:    []io.WriterTo{f.p.Metrics()},
	}
	st := d.UnlockAll(context.Background())
	for _, s := range st {
		t.Logf("%s: %s %s", s.Name, s.State, s.Reason)
		switch s.Name {
		case "good":
			if s.State != daemon.StateFailed || !strings.Contains(s.Reason, "not a block device") {
				t.Errorf("good: %+v (the KMS releases the key; mapping an image file fails)", s)
			}
		case "revoked":
			if s.State != daemon.StateLocked || !strings.Contains(s.Reason, "KEK revoked") || !strings.Contains(s.Reason, "PermissionDenied") || !strings.Contains(s.Reason, f.srv.Addr) {
				t.Errorf("revoked: %+v", s)
			}
		}
	}
	lf, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	recs, err := audit.Read(lf, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]audit.Record{}
	for _, r := range recs {
		if r.Kind == audit.KindKeyRelease {
			seen[r.Volume] = r
		}
	}
	if r := seen["good"]; r.Result != audit.Success || r.KMSServer != f.srv.Addr || r.KEKUID != goodKEK || !strings.HasPrefix(r.Detail, "kmip correlation ") || r.VolumeUUID == "" {
		t.Errorf("audit of the release: %+v", r)
	}
	if r := seen["revoked"]; r.Result != audit.Failure || r.KEKUID != kek || r.KMSServer != f.srv.Addr || !strings.Contains(r.Error, "PermissionDenied") {
		t.Errorf("audit of the refusal: %+v", r)
	}
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`diskcryptd_kms_requests_total{server="` + f.srv.Addr + `",result="ok"}`,
		`diskcryptd_kms_requests_total{server="` + f.srv.Addr + `",result="kmip_error"} 1`,
		`diskcryptd_kms_request_duration_seconds_count{server="` + f.srv.Addr + `"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, body)
		}
	}
}
