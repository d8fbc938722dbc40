package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// describingProtector is secretProtector that also describes its releases.
type describingProtector struct{ secretProtector }

func (describingProtector) DescribeRelease(_ context.Context, tok unlock.Token, r *audit.Record) {
	r.KMSServer, r.KEKUID = "kms.example:5696", "kek-for-token"
}

// TestUnlockAudited: the daemon writes one key-release record per token it tries,
// with the volume's name, UUID, token, protector, the protector's description and
// the result.
func TestUnlockAudited(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "v.img")
	os.WriteFile(p, nil, 0o600)
	os.Truncate(p, 20<<20)
	kdf := luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}
	v, vk, err := luks2.FormatFile(ctx, p, []byte("pw"), &luks2.FormatOptions{Keyslot: kdf})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"wrong", "sesame"} {
		if _, _, err := v.AddKeyslotWithToken(ctx, vk, []byte(s), luks2.AnySlot, &kdf, []byte(`{"type":"test"}`), luks2.AnyToken); err != nil {
			t.Fatal(err)
		}
	}
	uuid := v.Metadata().UUID
	vk.Wipe()
	v.Close()
	logPath := filepath.Join(dir, "audit.jsonl")
	d := &Daemon{
		Config: &Config{TokenTimeout: time.Second, DeviceTimeout: time.Second, Volumes: []VolumeConfig{{Name: "v", Device: p, MeasurePCR: -1}}},
		Protectors: func(VolumeConfig) []unlock.Protector {
			return []unlock.Protector{describingProtector{secretProtector{"sesame"}}}
		},
		Audit: audit.New(audit.Options{Path: logPath, Actor: "daemon", NoJournal: true}),
	}
	d.UnlockAll(ctx)
	recs, err := audit.ReadFile(logPath, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records: %+v", len(recs), recs)
	}
	for i, want := range []audit.Result{audit.Failure, audit.Success} {
		r := recs[i]
		if r.Kind != audit.KindKeyRelease || r.Result != want || r.Volume != "v" || r.VolumeUUID != uuid || r.Actor != "daemon" ||
			r.Protector != "test" || r.Token == nil || *r.Token != i || r.KEKUID != "kek-for-token" || len(r.Keyslots) != 1 {
			t.Errorf("record %d = %+v, want %s", i, r, want)
		}
	}
	if recs[0].Error == "" || recs[1].Error != "" {
		t.Errorf("errors: %q / %q", recs[0].Error, recs[1].Error)
	}
}
