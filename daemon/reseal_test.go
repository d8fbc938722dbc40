package daemon

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

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/reseal"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// TestResealStatusAndMetrics: the daemon opens a volume (on a loop device, mapped by a
// fake device-mapper, measured as serve measures: wiping the key bytes it was given)
// through its key file after its TPM2 token's PCR changed, reseals it, and says so in
// /v1/volumes and /metrics; a key file others may read is refused.
func TestResealStatusAndMetrics(t *testing.T) {
	spec := tpmtest.StartSwtpm(t)
	ctx := context.Background()
	dir := t.TempDir()
	kdf := luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}
	newProt := func(pcrs []int, bank string) (*tpm.Protector, error) {
		return tpm.NewProtector(tpm.Config{Device: spec, PCRs: pcrs, Bank: bank})
	}
	mk := func(name string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, nil, 0o600)
		os.Truncate(p, 20<<20)
		v, vk, err := luks2.FormatFile(ctx, p, []byte("fallback"), &luks2.FormatOptions{Keyslot: kdf})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		defer vk.Wipe()
		pr, _ := newProt([]int{16}, "")
		en, err := pr.Enroll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := json.Marshal(en.Token)
		if _, _, err := v.AddKeyslotWithToken(ctx, vk, en.Passphrase, luks2.AnySlot, &kdf, tok, luks2.AnyToken); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, loose := loopDevice(t, mk("good.img")), mk("loose.img")
	key := filepath.Join(dir, "key")
	os.WriteFile(key, []byte("fallback"), 0o600)
	looseKey := filepath.Join(dir, "loose.key")
	os.WriteFile(looseKey, []byte("fallback"), 0o644)
	tt, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	tpm.Extend(ctx, tt, 16, nil, []byte("firmware update"))
	tt.Close()
	prot, _ := newProt(nil, "")
	d := &Daemon{
		Config: &Config{TokenTimeout: 30 * time.Second, DeviceTimeout: time.Second, Volumes: []VolumeConfig{
			{Name: "good", Device: good, MeasurePCR: 15, KeyFile: key, ResealTPM2: true},
			{Name: "loose", Device: loose, MeasurePCR: -1, KeyFile: looseKey, ResealTPM2: true},
		}},
		Protectors: func(VolumeConfig) []unlock.Protector { return []unlock.Protector{prot} },
		DM:         newFakeDM(),
		Measure: func(_ context.Context, _ int, _, _ string, key []byte) error {
			clear(key)
			return nil
		},
		Reseal: &reseal.Resealer{Enroller: func(pcrs []int, bank string) (unlock.Enroller, error) {
			return newProt(pcrs, bank)
		}},
	}
	st := d.UnlockAll(ctx)
	if st[0].Name != "good" || st[0].State != StateUnlocked || st[0].Reseals != 1 || !strings.Contains(st[0].Reseal, "resealed: TPM2 token 0") {
		t.Errorf("good: %+v", st[0])
	}
	if st[1].State != StateLocked || !strings.Contains(st[1].Reason, "chmod 0600") || st[1].Reseals != 0 {
		t.Errorf("loose: %+v", st[1])
	}
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	get := func(p string) string {
		resp, err := srv.Client().Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if m := get("/metrics"); !strings.Contains(m, `diskcryptd_volume_reseals_total{volume="good"} 1`) ||
		!strings.Contains(m, `diskcryptd_volume_reseal_failures_total{volume="good"} 0`) {
		t.Errorf("/metrics:\n%s", m)
	}
	if v := get("/v1/volumes"); !strings.Contains(v, `"reseal":"resealed: TPM2 token 0`) {
		t.Errorf("/v1/volumes: %s", v)
	}
	// The next pass opens it through the TPM alone (no key file) and reseals nothing.
	d.Config.Volumes = d.Config.Volumes[:1]
	d.Config.Volumes[0].KeyFile = ""
	d.DM = newFakeDM()
	st = d.UnlockAll(ctx)
	if st[0].Reseals != 0 || st[0].State != StateUnlocked || st[0].Token != "0:systemd-tpm2" {
		t.Errorf("second pass: %+v", st[0])
	}
}
