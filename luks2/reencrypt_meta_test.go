package luks2

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"
)

// TestReencryptDigestMatchesCryptsetup reads the re-encryption metadata cryptsetup
// 2.6 writes (`reencrypt --init-only`) and checks its re-encryption digest against
// our serialization with both keys: a byte of difference fails the pbkdf2 digest.
// Changing the metadata (the resilience area size) must fail it too.
func TestReencryptDigestMatchesCryptsetup(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	for _, resilience := range []string{"checksum", "journal"} {
		t.Run(resilience, func(t *testing.T) {
			dir := t.TempDir()
			img := newImage(t, dir, 20<<20)
			kf := writeKeyFile(t, dir, []byte("x"))
			fast := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
			run(t, nil, cs, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", kf}, fast...), img)...)
			run(t, nil, cs, append(append([]string{"reencrypt", "--init-only", "--batch-mode", "--resilience", resilience, "--key-file", kf}, fast...), img)...)
			v, err := OpenFile(img, ReadWrite)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			r, err := v.Reencryption()
			if err != nil {
				t.Fatal(err)
			}
			if r.Keyslot.Resilience != resilience || r.Keyslot.Mode != "reencrypt" || r.Keyslot.Direction != "forward" || r.Version != 2 || r.Crashed() {
				t.Fatalf("%+v", r.Keyslot)
			}
			if len(r.Active()) != 1 || r.DigestOld < 0 || r.DigestNew < 0 || r.DigestOld == r.DigestNew {
				t.Fatalf("segments %+v digests %d %d", r.Segments, r.DigestOld, r.DigestNew)
			}
			oldVK, _, err := v.UnlockDigest(ctx, []byte("x"), r.DigestOld)
			if err != nil {
				t.Fatal(err)
			}
			newVK, _, err := v.UnlockDigest(ctx, []byte("x"), r.DigestNew)
			if err != nil {
				t.Fatal(err)
			}
			if oldVK.Equal(newVK) {
				t.Fatal("old and new keys are equal")
			}
			if err := v.VerifyReencryptDigest(oldVK, newVK); err != nil {
				t.Fatalf("our serialization differs from cryptsetup's: %v", err)
			}
			if err := v.VerifyReencryptDigest(newVK, oldVK); !errors.Is(err, ErrWrongVolumeKey) {
				t.Fatalf("swapped keys verified: %v", err)
			}
			// Tamper with the area size in the stored metadata: the digest no longer matches.
			r.Keyslot.AreaSize -= 4096
			data, err := ReencryptDigestData(r, oldVK, newVK)
			if err != nil {
				t.Fatal(err)
			}
			_, d := v.meta.digestOf(r.Keyslot.ID)
			if digestMatches(d, data) {
				t.Fatal("digest ignores the area size")
			}
		})
	}
}

// TestBeginReencryptCryptsetupAccepts starts a re-encryption here and lets
// cryptsetup verify our re-encryption digest and finish it (`reencrypt
// --resume-only`); the volume then opens with the passphrase and the new key.
func TestBeginReencryptCryptsetupAccepts(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	for _, resilience := range []string{"checksum", "journal"} {
		t.Run(resilience, func(t *testing.T) {
			dir := t.TempDir()
			img := newImage(t, dir, 20<<20)
			kf := writeKeyFile(t, dir, []byte("x"))
			run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", kf, img)
			v, err := OpenFile(img, ReadWrite)
			if err != nil {
				t.Fatal(err)
			}
			oldVK, _, err := v.Unlock(ctx, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			nb := make([]byte, oldVK.Len())
			rand.Read(nb)
			newVK := NewVolumeKey(nb)
			_, did, err := v.AddUnboundKeyslot(ctx, newVK, []byte("x"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}, 1000)
			if err != nil {
				t.Fatal(err)
			}
			md := v.Metadata()
			final := Segment{Type: "crypt", Offset: uint64(md.DataOffset), Dynamic: true, Encryption: md.Cipher, SectorSize: md.SectorSize}
			if err := v.BeginReencrypt(ReencryptInit{NewDigest: did, Final: final, Resilience: resilience, ChecksumBlock: md.SectorSize}, oldVK, newVK); err != nil {
				t.Fatal(err)
			}
			if err := v.VerifyReencryptDigest(oldVK, newVK); err != nil {
				t.Fatal(err)
			}
			v.Close()
			run(t, nil, cs, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", kf, img)
			got := dumpVolumeKey(t, cs, img, kf)
			if !bytes.Equal(got, newVK.Bytes()) {
				t.Fatal("cryptsetup finished with another key")
			}
		})
	}
}

// FuzzReencryptMetadata feeds the metadata parser and the re-encryption reader
// (parseReencrypt, ReencryptDigestData) fuzzed JSON, seeded with what cryptsetup
// wrote mid-run.
func FuzzReencryptMetadata(f *testing.F) {
	b, err := os.ReadFile("testdata/cryptsetup-2.6-reencrypt.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, js []byte) {
		if len(js) > DefaultHeaderSize-binHeaderSize {
			return
		}
		m, err := parseMetadata(js, DefaultHeaderSize)
		if err != nil {
			return
		}
		r, err := parseReencrypt(m)
		if err != nil {
			return
		}
		k := NewVolumeKey(make([]byte, 64))
		if d, err := ReencryptDigestData(r, k, k); err == nil && len(d) < 2 {
			t.Fatal("short digest data")
		}
		_ = r.Active()
		_ = r.Crashed()
	})
}

// TestCryptsetupInPlaceEncryptionReadable: the header of a cryptsetup in-place
// encryption in progress (linear segments, the backup-previous segment at offset 0
// where the header now is, a datashift reencrypt keyslot) reads as valid and
// read-only, with its re-encryption state, instead of "no valid header".
func TestCryptsetupInPlaceEncryptionReadable(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 96<<20)
	kf := writeKeyFile(t, dir, []byte("x"))
	run(t, nil, cs, "reencrypt", "--encrypt", "--init-only", "--batch-mode", "--reduce-device-size", "32M", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file", kf, img)
	v, err := OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if md := v.Metadata(); !md.ReadOnly {
		t.Fatal("in-place encryption in progress is not read-only")
	}
	r, err := v.Reencryption()
	if err != nil {
		t.Fatal(err)
	}
	if r.Keyslot.Mode != "encrypt" || r.Keyslot.Direction != "backward" || r.Keyslot.Resilience != "datashift" || r.Keyslot.ShiftSize != 16<<20 || r.DigestOld != -1 {
		t.Fatalf("%+v old %d", r.Keyslot, r.DigestOld)
	}
	newVK, _, err := v.UnlockDigest(context.Background(), []byte("x"), r.DigestNew)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.VerifyReencryptDigest(nil, newVK); err != nil {
		t.Fatalf("re-encryption digest (encrypt mode, new key only): %v", err)
	}
}

// TestReencryptKeyslotStrict: the reencrypt keyslot is read the way json-c reads it.
// A member that differs from "mode" only by case is not cryptsetup's "mode" (json-c
// matches exact names): a header whose reencrypt keyslot says "Mode" has no mode for
// cryptsetup and must be refused here, not read through encoding/json's case folding.
func TestReencryptKeyslotStrict(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	kf := writeKeyFile(t, dir, []byte("x"))
	fast := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	run(t, nil, cs, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", kf}, fast...), img)...)
	run(t, nil, cs, append(append([]string{"reencrypt", "--init-only", "--batch-mode", "--key-file", kf}, fast...), img)...)
	editHeaderJSON(t, img, func(js string) string {
		out := strings.Replace(js, `"mode":"reencrypt"`, `"Mode":"reencrypt"`, 1)
		if out == js {
			t.Fatalf("no reencrypt mode member in %s", js)
		}
		return out
	})
	v, err := OpenFile(img, ReadOnly)
	if err == nil {
		_, err = v.Reencryption()
		v.Close()
	}
	if !errors.Is(err, ErrInvalidMetadata) {
		t.Fatalf("reencrypt keyslot with a case-variant member: %v, want ErrInvalidMetadata", err)
	}
}

// TestVerifyDigestCostLimited: VerifyDigest (re-encryption checks a key against a
// digest no keyslot unlock went through) holds the digest's PBKDF2 iterations to the
// KDF limits before computing anything, as unlock does.
func TestVerifyDigestCostLimited(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	kf := writeKeyFile(t, dir, []byte("x"))
	run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", kf, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img)
	v, err := OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	vk, _, err := v.Unlock(context.Background(), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.VerifyDigest(0, vk); err != nil {
		t.Fatalf("right key: %v", err)
	}
	l := DefaultKDFLimits()
	l.MaxPBKDF2Iterations = 999 // cryptsetup's forced digest has 1000
	v.SetKDFLimits(l)
	if err := v.VerifyDigest(0, vk); !errors.Is(err, ErrKDFCost) {
		t.Fatalf("digest beyond the limits: %v, want ErrKDFCost", err)
	}
}
