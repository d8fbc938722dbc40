package reseal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/hashicorp/go-hclog"
)

var errPowerCut = errors.New("power cut")

// cutDev is an in-memory disk that loses power after limit bytes: the write that
// crosses the limit lands in part, later writes and syncs fail. It keeps the image as
// written and the image as synced (what a disk with a volatile cache keeps).
type cutDev struct {
	mu              sync.Mutex
	written, synced []byte
	unsynced        [][2]int64 // offset, length of writes since the last sync
	limit, count    int64      // limit < 0: never
	dead            bool
	starts          []int64 // byte count at the start of each write
	sizes           []int64
}

func newCutDev(img []byte, limit int64) *cutDev {
	return &cutDev{written: bytes.Clone(img), synced: bytes.Clone(img), limit: limit}
}

func (d *cutDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.written)) {
		return 0, errors.New("read outside the disk")
	}
	return copy(p, d.written[off:]), nil
}

func (d *cutDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return 0, errPowerCut
	}
	d.starts, d.sizes = append(d.starts, d.count), append(d.sizes, int64(len(p)))
	n := int64(len(p))
	if d.limit >= 0 && d.count+n > d.limit {
		n, d.dead = d.limit-d.count, true
	}
	copy(d.written[off:], p[:n])
	d.unsynced = append(d.unsynced, [2]int64{off, n})
	d.count += n
	if d.dead {
		return int(n), errPowerCut
	}
	return int(n), nil
}

func (d *cutDev) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return errPowerCut
	}
	for _, w := range d.unsynced {
		copy(d.synced[w[0]:w[0]+w[1]], d.written[w[0]:w[0]+w[1]])
	}
	d.unsynced = nil
	return nil
}

const diskSize = 4 << 20

func opens(t *testing.T, v *luks2.Volume, slot int, pass []byte) bool {
	t.Helper()
	k, err := v.UnlockKeyslot(context.Background(), slot, pass)
	if err != nil {
		return false
	}
	k.Wipe()
	return true
}

// TestResealPowerCut enrols a real TPM2 token (swtpm, PCR 16), changes PCR 16,
// prepares the replacement, then cuts the power at every write of the reseal (start,
// first byte, end of the binary header, middle and last byte of each write) and
// reopens both the written and the synced image: the fallback passphrase always
// opens the volume, exactly one of the two TPM2 tokens is there with its keyslot, and
// that keyslot opens with its secret. When the reseal is complete, the new token
// unseals through the TPM with today's PCRs.
func TestResealPowerCut(t *testing.T) {
	spec := tpmtest.StartSwtpm(t)
	ctx := context.Background()
	prot := func(pcrs []int) *tpm.Protector {
		p, err := tpm.NewProtector(tpm.Config{Device: spec, PCRs: pcrs})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The provisioned volume: keyslot 0 the fallback, keyslot 1 + token 0 the TPM2.
	d := newCutDev(make([]byte, diskSize), -1)
	v, vk, err := luks2.Format(ctx, d, diskSize, []byte("fallback"), &luks2.FormatOptions{
		DataOffset: 2 << 20, Keyslot: luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}})
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	old, err := prot([]int{16}).Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldTok, _ := json.Marshal(old.Token)
	if _, _, err := v.AddKeyslotWithToken(ctx, vk, old.Passphrase, luks2.AnySlot, &luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, oldTok, luks2.AnyToken); err != nil {
		t.Fatal(err)
	}
	// The firmware update.
	tt, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.Extend(ctx, tt, 16, nil, []byte("new firmware")); err != nil {
		t.Fatal(err)
	}
	tt.Close()
	tokens := func(v *luks2.Volume) []unlock.Token {
		var out []unlock.Token
		for _, tk := range v.Metadata().Tokens {
			raw, _ := v.ExportToken(tk.ID)
			out = append(out, unlock.Token{ID: tk.ID, Type: tk.Type, Keyslots: tk.Keyslots, JSON: raw})
		}
		return out
	}
	u := &unlock.Unlocker{Protectors: []unlock.Protector{prot(nil)}}
	rep, err := u.Unlock(ctx, tokens(v), func(context.Context, []byte, []int) error { return nil })
	if !errors.Is(err, tpm.ErrPolicyMismatch) {
		t.Fatalf("TPM2 token after the PCR change: %v, want ErrPolicyMismatch", err)
	}
	stale, err := FindStale(v.Metadata(), rep, []int{0})
	if err != nil || len(stale) != 1 || stale[0].Token.ID != 0 || fmt.Sprint(stale[0].PCRs) != "[16]" || stale[0].Bank != "sha256" {
		t.Fatalf("FindStale = %+v, %v", stale, err)
	}
	fresh, err := prot(stale[0].PCRs).Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base := bytes.Clone(d.written)
	v.Close()

	reseal := func(d *cutDev) (Result, error) {
		v, err := luks2.OpenDevice(d, diskSize, luks2.ReadWrite)
		if err != nil {
			t.Fatal(err)
		}
		return Apply(ctx, v, vk, stale[0], fresh)
	}
	dry := newCutDev(base, -1)
	res, err := reseal(dry)
	if err != nil {
		t.Fatal(err)
	}
	if res.OldToken != 0 || res.NewToken != 0 || res.NewKeyslot != 2 {
		t.Fatalf("result %+v", res)
	}
	cuts := map[int64]bool{dry.count: true}
	for i, s := range dry.starts {
		for _, x := range []int64{0, 1, 4096, dry.sizes[i] / 2, dry.sizes[i] - 1} {
			if x >= 0 && x <= dry.sizes[i] {
				cuts[s+x] = true
			}
		}
	}
	var order []int64
	for c := range cuts {
		order = append(order, c)
	}
	sort.Slice(order, func(i, j int) bool { return order[i] < order[j] })
	t.Logf("%d writes, %d bytes, %d power cuts", len(dry.starts), dry.count, len(order))
	checked := map[[32]byte]bool{} // an image already checked needs no second look
	for _, cut := range order {
		d := newCutDev(base, cut)
		_, err := reseal(d)
		done := err == nil
		if !done && !errors.Is(err, errPowerCut) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		for name, img := range map[string][]byte{"written": d.written, "synced": d.synced} {
			sum := sha256.Sum256(img)
			if checked[sum] && !(done && name == "synced") {
				continue
			}
			checked[sum] = true
			rv, err := luks2.OpenDevice(newCutDev(img, -1), diskSize, luks2.ReadOnly)
			if err != nil {
				t.Fatalf("cut at %d (%s): reopen: %v", cut, name, err)
			}
			if k, _, err := rv.Unlock(ctx, []byte("fallback")); err != nil {
				t.Errorf("cut at %d (%s): the fallback no longer opens the volume: %v", cut, name, err)
			} else {
				k.Wipe()
			}
			var tpmTokens []unlock.Token
			for _, tk := range tokens(rv) {
				if tk.Type == tpm.TypeSystemd {
					tpmTokens = append(tpmTokens, tk)
				}
			}
			if len(tpmTokens) != 1 || len(tpmTokens[0].Keyslots) != 1 {
				t.Errorf("cut at %d (%s): TPM2 tokens %+v, want exactly one with one keyslot", cut, name, tpmTokens)
				continue
			}
			// Keyslot 1 is the stale protector's, 2 the fresh one's; the token bound to it
			// must be that protector's token (same sealed blob).
			tk := tpmTokens[0]
			isFresh := tk.Keyslots[0] == 2
			pass, want := old.Passphrase, old.Token["tpm2-blob"]
			if isFresh {
				pass, want = fresh.Passphrase, fresh.Token["tpm2-blob"]
			}
			var blob struct {
				Blob string `json:"tpm2-blob"`
			}
			json.Unmarshal(tk.JSON, &blob)
			if blob.Blob != want {
				t.Errorf("cut at %d (%s): token %d bound to keyslot %d carries the other protector's blob", cut, name, tk.ID, tk.Keyslots[0])
			}
			if !opens(t, rv, tk.Keyslots[0], pass) {
				t.Errorf("cut at %d (%s): token %d's keyslot %d does not open with its secret", cut, name, tk.ID, tk.Keyslots[0])
			}
			if n := len(rv.Metadata().Keyslots); n != 2 {
				t.Errorf("cut at %d (%s): %d keyslots, want 2", cut, name, n)
			}
			if done && name == "synced" && !isFresh {
				t.Errorf("cut at %d: reseal returned success but the synced image has the stale token", cut)
			}
		}
	}
	// The completed reseal unlocks through the TPM alone.
	rv, err := luks2.OpenDevice(newCutDev(dry.synced, -1), diskSize, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	var got *luks2.VolumeKey
	rep, err = u.Unlock(ctx, tokens(rv), func(ctx context.Context, pass []byte, slots []int) error {
		k, err := rv.UnlockKeyslot(ctx, slots[0], pass)
		got = k
		return err
	})
	if err != nil || !got.Equal(vk) || rep.Winner().Token.ID != 0 || rep.Winner().Token.Keyslots[0] != 2 {
		t.Fatalf("unlock through the resealed token: %v", err)
	}
	got.Wipe()
}

func TestFindStale(t *testing.T) {
	tok := func(id int, js string, slots ...int) unlock.Token {
		return unlock.Token{ID: id, Type: tpm.TypeSystemd, Keyslots: slots, JSON: []byte(js)}
	}
	plain := `{"type":"systemd-tpm2","tpm2-blob":"AA==","tpm2-pcrs":[0,7],"tpm2-policy-hash":"00"}`
	pin := `{"type":"systemd-tpm2","tpm2-blob":"AA==","tpm2-pcrs":[7],"tpm2-pin":true,"tpm2-policy-hash":"00"}`
	signed := `{"type":"systemd-tpm2","tpm2-blob":"AA==","tpm2-pcrs":[],"tpm2_pubkey_pcrs":[11],"tpm2_pubkey":"AA==","tpm2-policy-hash":"00"}`
	mismatch := fmt.Errorf("tpm2: %w", tpm.ErrPolicyMismatch)
	md := func(toks ...unlock.Token) *luks2.Metadata {
		m := &luks2.Metadata{}
		for _, t := range toks {
			m.Tokens = append(m.Tokens, luks2.TokenInfo{ID: t.ID, Type: t.Type, Keyslots: t.Keyslots})
		}
		return m
	}
	shared := unlock.Token{ID: 5, Type: "clevis", Keyslots: []int{1}}
	tests := []struct {
		name     string
		md       *luks2.Metadata
		attempts []unlock.Attempt
		opened   []int
		want     []int
		err      error
	}{
		{"stale", md(tok(0, plain, 1)), []unlock.Attempt{{Token: tok(0, plain, 1), Err: mismatch}}, []int{0}, []int{0}, nil},
		{"other error", md(tok(0, plain, 1)), []unlock.Attempt{{Token: tok(0, plain, 1), Err: tpm.ErrLockout}}, nil, nil, ErrNothingStale},
		{"no attempts", md(), nil, nil, nil, ErrNothingStale},
		{"pin", md(tok(0, pin, 1)), []unlock.Attempt{{Token: tok(0, pin, 1), Err: mismatch}}, []int{0}, nil, ErrNotResealable},
		{"signed", md(tok(0, signed, 1)), []unlock.Attempt{{Token: tok(0, signed, 1), Err: mismatch}}, []int{0}, nil, ErrNotResealable},
		{"shared keyslot", md(tok(0, plain, 1), shared), []unlock.Attempt{{Token: tok(0, plain, 1), Err: mismatch}}, []int{0}, nil, ErrNotResealable},
		{"opened keyslot", md(tok(0, plain, 1)), []unlock.Attempt{{Token: tok(0, plain, 1), Err: mismatch}}, []int{1}, nil, ErrNotResealable},
		{"one of two", md(tok(0, plain, 1), tok(2, pin, 3)), []unlock.Attempt{{Token: tok(0, plain, 1), Err: mismatch}, {Token: tok(2, pin, 3), Err: mismatch}}, []int{0}, []int{0}, ErrNotResealable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FindStale(tc.md, &unlock.Report{Attempts: tc.attempts}, tc.opened)
			var ids []int
			for _, s := range got {
				ids = append(ids, s.Token.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(tc.want) {
				t.Errorf("stale tokens %v, want %v", ids, tc.want)
			}
			if (tc.err == nil) != (err == nil) || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Errorf("err = %v, want %v", err, tc.err)
			}
		})
	}
}

// TestResealAudited: a refused reseal (the token changed under us) is a failure
// record; no secret in it.
func TestResealAudited(t *testing.T) {
	ctx := context.Background()
	d := newCutDev(make([]byte, diskSize), -1)
	v, vk, err := luks2.Format(ctx, d, diskSize, []byte("fallback"), &luks2.FormatOptions{
		DataOffset: 2 << 20, Keyslot: luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}})
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	js := `{"type":"systemd-tpm2","tpm2-blob":"AA==","tpm2-pcrs":[16],"tpm2-policy-hash":"00"}`
	slot, tid, err := v.AddKeyslotWithToken(ctx, vk, []byte("secret-CANARY"), luks2.AnySlot, &luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, []byte(js), luks2.AnyToken)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	path := t.TempDir() + "/audit.jsonl"
	r := &Resealer{Audit: audit.New(audit.Options{Path: path, NoJournal: true}), Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Trace})}
	stale := []Stale{{Token: unlock.Token{ID: tid, Type: tpm.TypeSystemd, Keyslots: []int{slot}, JSON: []byte(`{"type":"systemd-tpm2","tpm2-blob":"BB=="}`)}, PCRs: []int{16}, Bank: "sha256"}}
	if _, err := r.Reseal(ctx, v, vk, stale, audit.Record{Actor: "test"}); !errors.Is(err, ErrNotResealable) {
		t.Fatalf("reseal of a changed token: %v", err)
	}
	recs, err := audit.ReadFile(path, time.Time{})
	if err != nil || len(recs) != 1 || recs[0].Kind != audit.KindReseal || recs[0].Result != audit.Failure || *recs[0].Token != tid {
		t.Fatalf("audit: %+v %v", recs, err)
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(logs.String(), "reseal failed") || strings.Contains(logs.String(), "CANARY") || strings.Contains(string(raw), "CANARY") {
		t.Fatalf("logs %q, audit %q: want a failure line and no secret", logs.String(), raw)
	}
}
