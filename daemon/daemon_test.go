package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/unlock"
)

func TestParseConfig(t *testing.T) {
	good := `# a comment
tpm2-device swtpm:path=/run/swtpm.sock
token-timeout 5s
device-timeout 1m
socket none
volume data0 UUID=0e3f6c1e-5a7b-4c43-9d2e-6f1f2a3b4c5d discard,tpm2-measure-pcr=15
volume data1 PARTLABEL=data1 readonly,no-read-workqueue,token-timeout=2s,tpm2-measure-pcr=no   # trailing comment
volume data2 /dev/vdb
volume data3 /dev/vdc tpm2-measure-pcr=7
volume data4 /dev/vdd tpm2-measure-pcr=yes
`
	c, err := ParseConfig(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.TPMDevice != "swtpm:path=/run/swtpm.sock" || c.TokenTimeout != 5*time.Second || c.DeviceTimeout != time.Minute || c.Socket != "" {
		t.Fatalf("globals: %+v", c)
	}
	want := []VolumeConfig{
		{Name: "data0", Device: "UUID=0e3f6c1e-5a7b-4c43-9d2e-6f1f2a3b4c5d", Flags: blockdev.AllowDiscards, MeasurePCR: 15},
		{Name: "data1", Device: "PARTLABEL=data1", ReadOnly: true, Flags: blockdev.NoReadWorkqueue, MeasurePCR: -1, TokenTimeout: 2 * time.Second},
		{Name: "data2", Device: "/dev/vdb", MeasurePCR: 15},
		{Name: "data3", Device: "/dev/vdc", MeasurePCR: 7},
		{Name: "data4", Device: "/dev/vdd", MeasurePCR: 15},
	}
	if len(c.Volumes) != len(want) {
		t.Fatalf("volumes: %+v", c.Volumes)
	}
	for i := range want {
		if c.Volumes[i] != want[i] {
			t.Errorf("volume %d = %+v, want %+v", i, c.Volumes[i], want[i])
		}
	}
	for _, bad := range []string{
		"volume x",
		"volume a /dev/a\nvolume a /dev/b",
		"volume a/b /dev/a",
		"volume a /dev/a bogus",
		"volume a /dev/a tpm2-measure-pcr=99",
		"volume a /dev/a tpm2-measure-pcr=maybe",
		"token-timeout soon",
		"frobnicate 1",
		strings.Repeat("x", 5000),
	} {
		if _, err := ParseConfig(strings.NewReader(bad)); !errors.Is(err, ErrConfig) {
			t.Errorf("ParseConfig(%.30q) err = %v, want ErrConfig", bad, err)
		}
	}
	if c, err := ParseConfig(strings.NewReader("")); err != nil || c.Socket != DefaultSocket || c.TokenTimeout != DefaultTokenTimeout {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

// secretProtector hands out one passphrase for tokens of type "test".
type secretProtector struct{ pass string }

func (secretProtector) Name() string { return "test" }
func (p secretProtector) Unseal(_ context.Context, tok unlock.Token) ([]byte, error) {
	if tok.Type != "test" {
		return nil, unlock.ErrNotMine
	}
	return []byte(p.pass), nil
}

// TestUnlockAllStates runs the daemon over real LUKS2 image files: one opens through its
// token (and then cannot be mapped: an image file is no block device), one has a token
// whose secret is wrong (locked, with the reason), one never appears (failed).
func TestUnlockAllStates(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	mk := func(name, tokenSecret string) string { return formatTestImage(t, dir, name, tokenSecret) }
	good := mk("good.img", "sesame")
	bad := mk("bad.img", "other")
	d := &Daemon{
		Config: &Config{TokenTimeout: time.Second, DeviceTimeout: 300 * time.Millisecond, Volumes: []VolumeConfig{
			{Name: "good", Device: good, MeasurePCR: -1},
			{Name: "bad", Device: bad, MeasurePCR: -1},
			{Name: "missing", Device: filepath.Join(dir, "nope.img"), MeasurePCR: -1},
		}},
		Protectors: func(VolumeConfig) []unlock.Protector { return []unlock.Protector{secretProtector{"sesame"}} },
	}
	st := d.UnlockAll(ctx)
	byName := map[string]VolumeStatus{}
	for _, s := range st {
		byName[s.Name] = s
	}
	if s := byName["good"]; s.State != StateFailed || !strings.Contains(s.Reason, "not a block device") || s.UUID == "" {
		t.Errorf("good: %+v (the key opens, the mapping needs a block device)", s)
	}
	if s := byName["bad"]; s.State != StateLocked || !strings.Contains(s.Reason, "no keyslot accepts") {
		t.Errorf("bad: %+v", s)
	}
	if s := byName["missing"]; s.State != StateFailed || !strings.Contains(s.Reason, "did not appear") {
		t.Errorf("missing: %+v", s)
	}
	if got := Summary(st); got != "0 of 3 volumes unlocked" {
		t.Errorf("summary %q", got)
	}
	if err := d.Run(ctx, true); !errors.Is(err, unlock.ErrLocked) {
		t.Errorf("Run once: %v, want ErrLocked", err)
	}

	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/volumes")
	if err != nil {
		t.Fatal(err)
	}
	var got []VolumeStatus
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if len(got) != 3 || got[0].Name != "bad" || got[0].State != StateLocked {
		t.Fatalf("/v1/volumes: %+v", got)
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	if !strings.Contains(b.String(), `diskcryptd_volume_state{volume="bad",state="locked"} 1`) {
		t.Fatalf("/metrics:\n%s", b.String())
	}
}
