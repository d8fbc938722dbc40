package luks2

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestPBKDF2(t *testing.T) {
	// RFC 6070 test vector 2.
	got := pbkdf2Key(sha1.New, []byte("password"), []byte("salt"), 2, 20)
	if hex.EncodeToString(got) != "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957" {
		t.Errorf("RFC 6070: %x", got)
	}
	for _, h := range []func() hash.Hash{sha1.New, sha256.New, sha512.New} {
		for _, n := range []int{1, 20, 32, 64, 100} {
			want, _ := pbkdf2.Key(h, "pw", []byte("saltsalt"), 7, n)
			if got := pbkdf2Key(h, []byte("pw"), []byte("saltsalt"), 7, n); !bytes.Equal(got, want) {
				t.Errorf("len %d: %x want %x", n, got, want)
			}
		}
	}
}

func TestAFRoundTrip(t *testing.T) {
	for _, h := range []string{"sha1", "sha256", "sha512"} {
		for _, n := range []int{16, 32, 64, 100} {
			key := bytes.Repeat([]byte{byte(n)}, n)
			s, err := afSplit(key, 37, h)
			if err != nil {
				t.Fatal(err)
			}
			got, err := afMerge(s, n, 37, h)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("%s/%d: merge failed", h, n)
			}
			s[0] ^= 1
			if got, _ := afMerge(s, n, 37, h); bytes.Equal(got, key) {
				t.Fatalf("%s/%d: a flipped stripe bit still merges to the key", h, n)
			}
		}
	}
	if _, err := afSplit([]byte{1}, 2, "md5"); !errors.Is(err, ErrUnsupported) {
		t.Fatal(err)
	}
}

func TestVolumeKeyRedacted(t *testing.T) {
	k := NewVolumeKey([]byte("supersecretkeybytes"))
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %s %#v", k, k, k, k), fmt.Sprintf("%v", struct{ K *VolumeKey }{k})} {
		if strings.Contains(s, "supersecret") {
			t.Errorf("leaked: %s", s)
		}
	}
	if _, err := json.Marshal(struct{ K *VolumeKey }{k}); err == nil {
		t.Error("json.Marshal of a volume key succeeded")
	}
	k.Wipe()
	if k.Len() != 0 || k.Bytes() != nil {
		t.Error("wipe")
	}
}

func openMem(t *testing.T, img []byte, mode Mode) (*Volume, *memDev) {
	t.Helper()
	d := newMemDev(img, -1)
	v, err := OpenDevice(d, int64(len(img)), mode)
	if err != nil {
		t.Fatal(err)
	}
	return v, d
}

func TestKeyslotLifecycle(t *testing.T) {
	ctx := context.Background()
	v, _ := openMem(t, memFormat(t, 4<<20, "zero", &FormatOptions{Keyslot: KeyslotOptions{KDF: MinimumCostKDF()}, DataOffset: 4 << 20 / 2, digestIterations: 1000}), ReadWrite)
	vk, slot, err := v.Unlock(ctx, []byte("zero"))
	if err != nil || slot != 0 {
		t.Fatal(err)
	}
	defer vk.Wipe()
	fast := &KeyslotOptions{KDF: MinimumCostKDF()}
	if _, err := v.AddKeyslot(ctx, vk, []byte("x"), 0, fast); !errors.Is(err, ErrKeyslotInUse) {
		t.Fatalf("slot in use: %v", err)
	}
	if _, err := v.AddKeyslot(ctx, NewVolumeKey(make([]byte, 64)), []byte("x"), AnySlot, fast); !errors.Is(err, ErrWrongVolumeKey) {
		t.Fatalf("wrong key: %v", err)
	}
	// Priorities: a preferred slot is tried first, an ignored one only by number.
	pref := &KeyslotOptions{KDF: MinimumCostKDF(), Priority: PriorityPrefer}
	if id, err := v.AddKeyslot(ctx, vk, []byte("same"), 5, fast); err != nil || id != 5 {
		t.Fatal(id, err)
	}
	if id, err := v.AddKeyslot(ctx, vk, []byte("same"), 7, pref); err != nil || id != 7 {
		t.Fatal(id, err)
	}
	if _, s, err := v.Unlock(ctx, []byte("same")); err != nil || s != 7 {
		t.Fatalf("preferred slot not first: %d %v", s, err)
	}
	if err := v.SetKeyslotPriority(7, PriorityIgnore); err != nil {
		t.Fatal(err)
	}
	if _, s, err := v.Unlock(ctx, []byte("same")); err != nil || s != 5 {
		t.Fatalf("ignored slot used: %d %v", s, err)
	}
	if err := v.SetKeyslotPriority(5, PriorityIgnore); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Unlock(ctx, []byte("same")); !errors.Is(err, ErrNoKeyslotAccepts) {
		t.Fatalf("only ignored slots: %v", err)
	}
	if k, err := v.UnlockKeyslot(ctx, 7, []byte("same")); err != nil || !k.Equal(vk) {
		t.Fatalf("explicit ignored slot: %v", err)
	}
	md := v.Metadata()
	if md.Keyslots[2].Priority != PriorityIgnore || md.Keyslots[2].KDF.Hash != "sha512" || md.Keyslots[2].KDF.Iterations != 1000 {
		t.Errorf("%+v", md.Keyslots[2])
	}
	// Fill the keyslots area (2 MiB - 32 KiB holds 8 areas of 252 KiB).
	n := 0
	for {
		if _, err := v.AddKeyslot(ctx, vk, []byte("fill"), AnySlot, fast); err != nil {
			if !errors.Is(err, ErrNoFreeKeyslot) {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	if got := len(v.Metadata().Keyslots); got != 8 {
		t.Errorf("filled to %d keyslots (added %d)", got, n)
	}
	if err := v.RemoveKeyslot(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := v.RemoveKeyslot(ctx, 5); !errors.Is(err, ErrKeyslotNotFound) {
		t.Fatal(err)
	}
	if _, err := v.AddKeyslot(ctx, vk, []byte("reuse"), AnySlot, fast); err != nil {
		t.Fatalf("reuse of a freed area: %v", err)
	}
	// Wrong passphrases never appear in errors.
	_, _, err = v.Unlock(ctx, []byte("hunter2-secret"))
	if !errors.Is(err, ErrNoKeyslotAccepts) || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("%v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := v.Unlock(cctx, []byte("zero")); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

func TestReadOnlyModes(t *testing.T) {
	ctx := context.Background()
	img := memFormat(t, crashSize, "p", crashFormatOpts())
	v, _ := openMem(t, img, ReadOnly)
	if _, err := v.AddToken([]byte(`{"type":"a","keyslots":[]}`), AnyToken); !errors.Is(err, ErrReadOnly) {
		t.Fatal(err)
	}
	// Unknown mandatory requirements: readable, unlockable, not writable, not
	// activatable.
	v, d := openMem(t, img, ReadWrite)
	n := v.meta.clone()
	n.config.Requirements = &jsonRequirements{Mandatory: []string{"future-feature"}}
	n.rawCfg = mustRaw(n.config)
	if err := v.commit(n, "", ""); err != nil {
		t.Fatal(err)
	}
	v, _ = openMem(t, d.cur, ReadWrite)
	md := v.Metadata()
	if !md.ReadOnly || md.Requirements[0] != "future-feature" {
		t.Fatalf("%+v", md)
	}
	vk, _, err := v.Unlock(ctx, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.CryptTarget(vk); !errors.Is(err, ErrUnsupportedRequirement) {
		t.Fatalf("activation: %v", err)
	}
	if _, err := v.AddKeyslot(ctx, vk, []byte("q"), AnySlot, nil); !errors.Is(err, ErrUnsupportedRequirement) {
		t.Fatalf("write: %v", err)
	}
	if err := v.RemoveKeyslot(ctx, 0); !errors.Is(err, ErrUnsupportedRequirement) {
		t.Fatalf("write: %v", err)
	}
}

func TestCryptTarget(t *testing.T) {
	ctx := context.Background()
	size := int64(crashSize)
	o := crashFormatOpts()
	o.Flags = []string{FlagAllowDiscards}
	o.KeySize = 256
	d := newMemDev(make([]byte, size), -1)
	v, vk, err := Format(ctx, d, size, []byte("p"), o)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := v.CryptTarget(vk)
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Key.Wipe()
	if ct.Cipher != "aes-xts-plain64" || ct.Offset != crashDataOffset || ct.Size != size-crashDataOffset || ct.SectorSize != 4096 || ct.Key.Len() != 32 || ct.Flags[0] != FlagAllowDiscards {
		t.Errorf("%+v", ct)
	}
	if _, err := v.CryptTarget(NewVolumeKey(make([]byte, 32))); !errors.Is(err, ErrWrongVolumeKey) {
		t.Fatal(err)
	}
	// A segment with dm-integrity is never activated here.
	n := v.meta.clone()
	id, seg := n.dataSegment()
	raw, err := setMember(seg.raw, "integrity", []byte(`{"type":"hmac(sha256)","journal_encryption":"none","journal_integrity":"none"}`))
	if err != nil {
		t.Fatal(err)
	}
	n.segments[id] = &segmentEntry{raw: raw}
	if err := v.commit(n, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := v.CryptTarget(vk); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("integrity segment: %v", err)
	}
}

func TestFormatOptions(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		size   int64
		opts   FormatOptions
		err    error
		sector int
	}{
		{"4096 by default", crashSize, FormatOptions{}, nil, 4096},
		{"512 when the data area is odd", crashSize + 512, FormatOptions{}, nil, 512},
		{"4096 refused on odd data area", crashSize + 512, FormatOptions{SectorSize: 4096}, ErrUnsupported, 0},
		{"bad key size", crashSize, FormatOptions{KeySize: 128}, ErrUnsupported, 0},
		{"bad sector size", crashSize, FormatOptions{SectorSize: 1000}, ErrUnsupported, 0},
		{"too small", crashDataOffset, FormatOptions{}, ErrDeviceTooSmall, 0},
		{"long label", crashSize, FormatOptions{Label: strings.Repeat("x", 48)}, ErrUnsupported, 0},
		{"unknown flag", crashSize, FormatOptions{Flags: []string{"nope"}}, ErrUnsupported, 0},
		{"bad kdf", crashSize, FormatOptions{Keyslot: KeyslotOptions{KDF: KDFOptions{Type: "scrypt"}}}, ErrUnsupported, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.DataOffset = crashDataOffset
			o.digestIterations = 1000
			if o.Keyslot.KDF.Type == "" {
				o.Keyslot.KDF = MinimumCostKDF()
			}
			d := newMemDev(make([]byte, tc.size), -1)
			v, vk, err := Format(ctx, d, tc.size, []byte("p"), &o)
			if !errors.Is(err, tc.err) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
			if err == nil {
				vk.Wipe()
				if s := v.Metadata().SectorSize; s != tc.sector {
					t.Errorf("sector size %d", s)
				}
			}
		})
	}
}

// TestMetadataValidation mutates valid metadata into invalid forms.
func TestMetadataValidation(t *testing.T) {
	img := memFormat(t, crashSize, "p", crashFormatOpts())
	v, _ := openMem(t, img, ReadWrite)
	if _, err := v.AddKeyslotByPassphrase(context.Background(), []byte("p"), []byte("q"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
		t.Fatal(err)
	}
	good := string(v.meta.encode())
	if _, err := parseMetadata([]byte(good), DefaultHeaderSize); err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	json.Unmarshal([]byte(good), &top)
	ks1 := top["keyslots"].(map[string]any)["1"].(map[string]any)
	off1 := ks1["area"].(map[string]any)["offset"].(string)
	for _, tc := range []struct{ name, from, to string }{
		{"overlapping areas", `"offset":"` + off1 + `"`, `"offset":"32768"`},
		{"area outside", `"offset":"` + off1 + `"`, `"offset":"9999998976"`},
		{"segment in keyslots area", `"offset":"2097152"`, `"offset":"1048576"`},
		{"leading zero id", `"1":{"type":"luks2"`, `"01":{"type":"luks2"`},
		{"id too large", `"1":{"type":"luks2"`, `"32":{"type":"luks2"`},
		{"number offset", `"offset":"2097152"`, `"offset":2097152`},
		{"json_size", `"json_size":"12288"`, `"json_size":"12289"`},
		{"digest to missing keyslot", `"keyslots":["0","1"]`, `"keyslots":["0","9"]`},
		{"bad sector size", `"sector_size":4096`, `"sector_size":4000`},
		{"missing tokens", `"tokens":{},`, ``},
		{"huge argon memory", `"type":"pbkdf2","hash":"sha512","iterations":1000`, `"type":"argon2id","time":4,"memory":99999999,"cpus":1`},
		{"stripes", `"stripes":4000`, `"stripes":4001`},
		{"trailing garbage", `}}}`, `}}}}`},
		{"bad base64", `"salt":"`, `"salt":"!`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.from) {
				t.Fatalf("%q not in %s", tc.from, good)
			}
			bad := strings.Replace(good, tc.from, tc.to, 1)
			if tc.name == "trailing garbage" {
				bad = good + "}"
			}
			if _, err := parseMetadata([]byte(bad), DefaultHeaderSize); !errors.Is(err, ErrInvalidMetadata) {
				t.Fatalf("accepted (%v): %s", err, bad)
			}
		})
	}
}

func TestTokenAPI(t *testing.T) {
	ctx := context.Background()
	v, _ := openMem(t, memFormat(t, crashSize, "p", crashFormatOpts()), ReadWrite)
	for _, bad := range []string{`[]`, `{"keyslots":["0"]}`, `{"type":"x"}`, `{"type":"x","keyslots":["3"]}`, `{"type":"x","keyslots":[0]}`, `nope`} {
		if _, err := v.AddToken([]byte(bad), AnyToken); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: %v", bad, err)
		}
	}
	vk, _, _ := v.Unlock(ctx, []byte("p"))
	tok := []byte(`{"type":"systemd-tpm2","tpm2-blob":"Zm9v","keyslots":["0"],"tpm2-pcrs":[7]}`)
	slot, tid, err := v.AddKeyslotWithToken(ctx, vk, []byte("tpm secret"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}, tok, 4)
	if err != nil || slot != 1 || tid != 4 {
		t.Fatal(slot, tid, err)
	}
	got, _ := v.ExportToken(4)
	if want := `{"type":"systemd-tpm2","tpm2-blob":"Zm9v","keyslots":["1"],"tpm2-pcrs":[7]}`; string(got) != want {
		t.Errorf("got %s want %s", got, want)
	}
	if _, err := v.ImportToken(strings.NewReader(`{"type":"y","keyslots":["0","1"]}`), 4); !errors.Is(err, ErrTokenInUse) {
		t.Fatal(err)
	}
	if err := v.RemoveKeyslot(ctx, 1); err != nil {
		t.Fatal(err)
	}
	got, _ = v.ExportToken(4)
	if want := `{"type":"systemd-tpm2","tpm2-blob":"Zm9v","keyslots":[],"tpm2-pcrs":[7]}`; string(got) != want {
		t.Errorf("after keyslot removal: got %s", got)
	}
	seq := v.Metadata().Seqid
	if err := v.ReplaceToken(4, []byte(`{"type":"z","keyslots":["0"],"x":1}`)); err != nil {
		t.Fatal(err)
	}
	got, _ = v.ExportToken(4)
	if want := `{"type":"z","keyslots":["0"],"x":1}`; string(got) != want || v.Metadata().Seqid != seq+1 {
		t.Errorf("after ReplaceToken: got %s, seqid %d (was %d)", got, v.Metadata().Seqid, seq)
	}
	for id, bad := range map[int]string{5: `{"type":"z","keyslots":[]}`, 4: `{"type":"z","keyslots":["9"]}`} {
		if err := v.ReplaceToken(id, []byte(bad)); err == nil {
			t.Errorf("ReplaceToken(%d, %s) accepted", id, bad)
		}
	}
}

func TestResolveKDFTimeTarget(t *testing.T) {
	ctx := context.Background()
	p, err := ResolveKDF(ctx, KDFOptions{Type: KDFPBKDF2, Hash: "sha512", IterTime: 50 * time.Millisecond})
	if err != nil || p.Iterations < MinPBKDF2Iterations || p.Hash != "sha512" {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = ResolveKDF(ctx, KDFOptions{Type: KDFArgon2i, MemoryKiB: 32 << 10, Parallel: 1, IterTime: 100 * time.Millisecond})
	if err != nil || p.Time < 4 || p.MemoryKiB > 32<<10 || p.MemoryKiB < 8 || p.Parallel != 1 {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = ResolveKDF(ctx, KDFOptions{Type: KDFArgon2id, Iterations: 5, MemoryKiB: 1024})
	if err != nil || p != (KDFParams{Type: KDFArgon2id, Time: 5, MemoryKiB: 1024, Parallel: min(4, runtime.NumCPU())}) {
		t.Fatalf("%+v %v", p, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := ResolveKDF(cctx, KDFOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func TestEraseAndMemBackup(t *testing.T) {
	ctx := context.Background()
	img := memFormat(t, crashSize, "p", crashFormatOpts())
	img[5000] ^= 1 // damaged primary: the backup still carries two valid copies
	v, d := openMem(t, img, ReadWrite)
	if _, err := v.AddToken([]byte(`{"type":"t","keyslots":["0"]}`), 2); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := v.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != crashDataOffset {
		t.Fatalf("backup of %d bytes", buf.Len())
	}
	area := bytes.Clone(d.cur[2*DefaultHeaderSize : 2*DefaultHeaderSize+4096])
	if err := v.Erase(ctx); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(area, d.cur[2*DefaultHeaderSize:2*DefaultHeaderSize+4096]) {
		t.Error("keyslot area not overwritten")
	}
	md := v.Metadata()
	if len(md.Keyslots) != 0 || len(md.Tokens) != 1 || len(md.Tokens[0].Keyslots) != 0 {
		t.Errorf("after erase: %+v", md)
	}
	if _, _, err := v.Unlock(ctx, []byte("p")); !errors.Is(err, ErrNoKeyslotAccepts) {
		t.Fatal(err)
	}
	if err := RestoreHeader(d, crashSize, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	v, _ = openMem(t, d.cur, ReadOnly)
	if md := v.Metadata(); !md.PrimaryValid || !md.SecondaryValid || !unlocks(v, "p") {
		t.Fatalf("after restore: %+v", md)
	}
	if err := RestoreHeader(d, crashSize, bytes.NewReader(make([]byte, 1<<20)), 1<<20); !errors.Is(err, ErrNotLUKS) {
		t.Fatalf("restore of garbage: %v", err)
	}
}

func TestMetadataFull(t *testing.T) {
	v, _ := openMem(t, memFormat(t, crashSize, "p", crashFormatOpts()), ReadWrite)
	big := `{"type":"t","keyslots":[],"pad":"` + strings.Repeat("x", 5000) + `"}`
	var err error
	for i := 0; i < 4 && err == nil; i++ {
		_, err = v.AddToken([]byte(big), AnyToken)
	}
	if !errors.Is(err, ErrMetadataFull) {
		t.Fatalf("got %v", err)
	}
	if !unlocks(v, "p") || len(v.Metadata().Tokens) != 2 {
		t.Fatal("volume changed by a failed token add")
	}
}
