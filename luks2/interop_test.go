package luks2

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	luksgo "github.com/anatol/luks.go"
)

type kdfCase struct {
	name string
	kdf  KDFOptions
	args []string // the same parameters for cryptsetup
}

var matrixKDFs = []kdfCase{
	{"argon2id", KDFOptions{Type: KDFArgon2id, Iterations: 4, MemoryKiB: 32 << 10, Parallel: 2},
		[]string{"--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", "--pbkdf-parallel", "2"}},
	{"argon2i", KDFOptions{Type: KDFArgon2i, Iterations: 4, MemoryKiB: 32 << 10, Parallel: 1},
		[]string{"--pbkdf", "argon2i", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", "--pbkdf-parallel", "1"}},
	{"pbkdf2-sha256", KDFOptions{Type: KDFPBKDF2, Hash: "sha256", Iterations: 1000},
		[]string{"--pbkdf", "pbkdf2", "--hash", "sha256", "--pbkdf-force-iterations", "1000"}},
	{"pbkdf2-sha512", KDFOptions{Type: KDFPBKDF2, Hash: "sha512", Iterations: 1000},
		[]string{"--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000"}},
}

// dumpVolumeKey returns the volume key cryptsetup recovers with keyFile.
func dumpVolumeKey(t testing.TB, cs, img, keyFile string) []byte {
	t.Helper()
	out := run(t, nil, cs, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", keyFile, img)
	i := strings.Index(out, "MK dump:")
	if i < 0 {
		t.Fatalf("no MK dump in:\n%s", out)
	}
	var key []byte
	for _, f := range strings.Fields(out[i+len("MK dump:"):]) {
		b, err := hex.DecodeString(f)
		if err != nil || len(b) != 1 {
			break
		}
		key = append(key, b...)
	}
	return key
}

// anatolHMAC returns HMAC-SHA256(volume key, msg) as anatol/luks.go computes it after
// unsealing slot with pass.
func anatolHMAC(t testing.TB, img string, slot int, pass []byte, msg []byte) []byte {
	t.Helper()
	d, err := luksgo.Open(img)
	if err != nil {
		t.Fatalf("luks.go Open: %v", err)
	}
	defer d.Close()
	vol, err := d.UnsealVolume(slot, pass)
	if err != nil {
		t.Fatalf("luks.go UnsealVolume: %v", err)
	}
	mac, err := vol.HMAC(crypto.SHA256, msg)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

func TestMatrixWeFormatCryptsetupReads(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	for _, kc := range matrixKDFs {
		for _, sector := range []int{512, 4096} {
			for _, bits := range []int{256, 512} {
				t.Run(fmt.Sprintf("%s/%d/%d", kc.name, sector, bits), func(t *testing.T) {
					dir := t.TempDir()
					img := newImage(t, dir, 20<<20)
					pass := []byte("correct horse " + kc.name)
					kf := writeKeyFile(t, dir, pass)
					v, vk, err := FormatFile(ctx, img, pass, &FormatOptions{
						KeySize: bits, SectorSize: sector, Label: "lbl", Subsystem: "sub",
						Flags:   []string{FlagAllowDiscards, FlagNoReadWorkqueue},
						Keyslot: KeyslotOptions{KDF: kc.kdf}, digestIterations: 1000,
					})
					if err != nil {
						t.Fatal(err)
					}
					defer vk.Wipe()
					md := v.Metadata()
					if md.SectorSize != sector || md.KeySize*8 != bits || md.DataOffset != DefaultDataOffset || md.Cipher != DataCipher {
						t.Errorf("metadata %+v", md)
					}
					v.Close()
					dump := run(t, nil, cs, "luksDump", img)
					for _, want := range []string{"sector: " + fmt.Sprint(sector), "PBKDF:      " + kc.kdf.Type, md.UUID, "lbl", "allow-discards"} {
						if !strings.Contains(dump, want) {
							t.Errorf("luksDump lacks %q:\n%s", want, dump)
						}
					}
					run(t, nil, cs, "open", "--test-passphrase", "--key-file", kf, img)
					if got := dumpVolumeKey(t, cs, img, kf); !bytes.Equal(got, vk.Bytes()) {
						t.Fatalf("cryptsetup volume key differs")
					}
					// anatol/luks.go, an independent reader, recovers the same key.
					msg := []byte("diskcryptd")
					m := hmac.New(sha256.New, vk.Bytes())
					m.Write(msg)
					if !hmac.Equal(anatolHMAC(t, img, 0, pass, msg), m.Sum(nil)) {
						t.Fatalf("luks.go recovered a different volume key")
					}
					// cryptsetup adds a keyslot to our volume; we open it.
					pass2 := []byte("second")
					kf2 := writeKeyFile(t, dir, pass2)
					run(t, nil, cs, append([]string{"luksAddKey", "--batch-mode", "--key-file", kf}, append(kc.args, img, kf2)...)...)
					run(t, nil, cs, "repair", "--batch-mode", img)
					v, err = OpenFile(img, ReadOnly)
					if err != nil {
						t.Fatal(err)
					}
					defer v.Close()
					k2, slot, err := v.Unlock(ctx, pass2)
					if err != nil || slot != 1 || !k2.Equal(vk) {
						t.Fatalf("unlock of cryptsetup's keyslot: slot %d err %v", slot, err)
					}
				})
			}
		}
	}
}

func TestMatrixCryptsetupFormatsWeRead(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	for _, kc := range matrixKDFs {
		for _, sector := range []int{512, 4096} {
			for _, bits := range []int{256, 512} {
				t.Run(fmt.Sprintf("%s/%d/%d", kc.name, sector, bits), func(t *testing.T) {
					dir := t.TempDir()
					img := newImage(t, dir, 20<<20)
					pass := []byte("cryptsetup pass")
					kf := writeKeyFile(t, dir, pass)
					args := []string{"luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64",
						"--key-size", fmt.Sprint(bits), "--sector-size", fmt.Sprint(sector), "--key-file", kf, "--label", "csl"}
					run(t, nil, cs, append(append(args, kc.args...), img)...)
					want := dumpVolumeKey(t, cs, img, kf)
					v, err := OpenFile(img, ReadWrite)
					if err != nil {
						t.Fatal(err)
					}
					defer v.Close()
					md := v.Metadata()
					if md.SectorSize != sector || md.KeySize*8 != bits || md.Label != "csl" || len(md.Keyslots) != 1 || md.Keyslots[0].KDF.Type != kc.kdf.Type {
						t.Errorf("metadata %+v", md)
					}
					vk, slot, err := v.Unlock(ctx, pass)
					if err != nil || slot != 0 {
						t.Fatalf("unlock: %v", err)
					}
					defer vk.Wipe()
					if !bytes.Equal(vk.Bytes(), want) {
						t.Fatalf("volume key differs from cryptsetup's")
					}
					if _, _, err := v.Unlock(ctx, []byte("wrong")); !errors.Is(err, ErrNoKeyslotAccepts) || !strings.Contains(err.Error(), "no keyslot accepts this key") {
						t.Fatalf("wrong passphrase: %v", err)
					}
					// We add a keyslot to cryptsetup's volume; cryptsetup opens it.
					pass2 := []byte("ours")
					if _, err := v.AddKeyslot(ctx, vk, pass2, AnySlot, &KeyslotOptions{KDF: kc.kdf}); err != nil {
						t.Fatal(err)
					}
					run(t, nil, cs, "open", "--test-passphrase", "--key-slot", "1", "--key-file", writeKeyFile(t, dir, pass2), img)
				})
			}
		}
	}
}

// TestDefaultParameters formats with no options at all: cryptsetup's defaults,
// including the KDF benchmark (argon2id, 2 s) and the 4096-byte sector size.
func TestDefaultParameters(t *testing.T) {
	cs := needCryptsetup(t)
	if testing.Short() {
		t.Skip("benchmarks the KDF for 2 s")
	}
	ctx := context.Background()
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	pass := []byte("default")
	v, vk, err := FormatFile(ctx, img, pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	md := v.Metadata()
	v.Close()
	k := md.Keyslots[0].KDF
	if k.Type != KDFArgon2id || k.Time < 4 || k.MemoryKiB > DefaultArgon2MaxMemoryKiB || int64(k.MemoryKiB) > totalRAMKiB()/2+1 || k.Parallel != min(4, runtime.NumCPU()) {
		t.Errorf("default KDF %+v", k)
	}
	if md.KeySize != 64 || md.SectorSize != 4096 || md.DataOffset != 16<<20 || md.HeaderSize != 16<<10 {
		t.Errorf("defaults %+v", md)
	}
	t.Logf("default KDF on this machine: %+v", k)
	v, err = OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if k2, _, err := v.Unlock(ctx, pass); err != nil || !k2.Equal(vk) {
		t.Fatalf("unlock: %v", err)
	}
	t.Logf("unlock took %v (target %v)", time.Since(start), DefaultIterTime)
	v.Close()
	run(t, nil, cs, "open", "--test-passphrase", "--key-file", writeKeyFile(t, dir, pass), img)
}

func TestTokensInterop(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	v, vk, err := FormatFile(context.Background(), img, []byte("p"), fastFormat())
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	// Ours, with unknown fields in an odd order, exported by cryptsetup.
	ours := []byte(`{"type":"diskcryptd-test","zeta":[1,2,{"a":null}],"keyslots":["0"],"alpha":"x","n":1.5e3}`)
	id, err := v.AddToken(ours, 3)
	if err != nil || id != 3 {
		t.Fatal(id, err)
	}
	if got, _ := v.ExportToken(3); !bytes.Equal(got, ours) {
		t.Errorf("export changed the token: %s", got)
	}
	v.Close()
	got := run(t, nil, cs, "token", "export", "--token-id", "3", img)
	if !jsonEqual(t, []byte(got), ours) {
		t.Errorf("cryptsetup exports %s, want %s", got, ours)
	}
	// cryptsetup's, imported there, read here.
	theirs := []byte(`{"type":"some-vendor","keyslots":["0"],"jwe":{"protected":"eyJ","x":[true,false]}}`)
	run(t, theirs, cs, "token", "import", "--token-id", "7", img)
	v, err = OpenFile(img, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got2, err := v.ExportToken(7)
	if err != nil || !jsonEqual(t, got2, theirs) {
		t.Fatalf("token 7: %s %v", got2, err)
	}
	md := v.Metadata()
	if len(md.Tokens) != 2 || md.Tokens[1].Type != "some-vendor" || md.Tokens[1].Keyslots[0] != 0 {
		t.Errorf("tokens %+v", md.Tokens)
	}
	if err := v.RemoveToken(3); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ExportToken(3); !errors.Is(err, ErrTokenNotFound) {
		t.Fatal(err)
	}
	run(t, nil, cs, "luksDump", img)
}

func corrupt(t testing.TB, img string, off int64) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x55
	f.WriteAt(b, off)
}

func TestDamagedHeaders(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	for _, hs := range []int64{16 << 10, 64 << 10} {
		for _, where := range []string{"magic", "json", "binary"} {
			t.Run(fmt.Sprintf("%d/%s", hs, where), func(t *testing.T) {
				dir := t.TempDir()
				img := newImage(t, dir, 20<<20)
				pass := []byte("pass")
				opts := fastFormat()
				opts.HeaderSize = hs
				v, vk, err := FormatFile(ctx, img, pass, opts)
				if err != nil {
					t.Fatal(err)
				}
				defer vk.Wipe()
				v.Close()
				off := map[string]int64{"magic": 0, "json": 5000, "binary": offLabel + 1}[where]
				corrupt(t, img, off)
				v, err = OpenFile(img, ReadWrite)
				if err != nil {
					t.Fatalf("open with damaged primary: %v", err)
				}
				md := v.Metadata()
				if md.PrimaryValid || !md.SecondaryValid {
					t.Errorf("valid copies: %v %v", md.PrimaryValid, md.SecondaryValid)
				}
				k, _, err := v.Unlock(ctx, pass)
				if err != nil || !k.Equal(vk) {
					t.Fatalf("unlock from secondary: %v", err)
				}
				if err := v.Repair(); err != nil {
					t.Fatal(err)
				}
				v.Close()
				v, err = OpenFile(img, ReadOnly)
				if err != nil {
					t.Fatal(err)
				}
				if md := v.Metadata(); !md.PrimaryValid || !md.SecondaryValid {
					t.Errorf("after repair: %v %v", md.PrimaryValid, md.SecondaryValid)
				}
				v.Close()
				run(t, nil, cs, "repair", "--batch-mode", img)
				run(t, nil, cs, "open", "--test-passphrase", "--key-file", writeKeyFile(t, dir, pass), img)
				// Both copies damaged: a clear error.
				corrupt(t, img, 5000)
				corrupt(t, img, hs+5000)
				_, err = OpenFile(img, ReadOnly)
				if !errors.Is(err, ErrNoValidHeader) || !strings.Contains(err.Error(), "checksum") {
					t.Fatalf("both damaged: %v", err)
				}
			})
		}
	}
}

// TestCryptsetupRepairsOurs damages our primary header and lets cryptsetup repair it.
func TestCryptsetupRepairsOurs(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	v, vk, err := FormatFile(context.Background(), img, []byte("pass"), fastFormat())
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	v.Close()
	corrupt(t, img, 5000)
	run(t, nil, cs, "repair", "--batch-mode", img)
	v, err = OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if md := v.Metadata(); !md.PrimaryValid || !md.SecondaryValid {
		t.Errorf("after cryptsetup repair: %+v", md)
	}
}

func TestFormatGuard(t *testing.T) {
	cs := needCryptsetup(t)
	mkfs := needTool(t, "mkfs.ext4")
	ctx := context.Background()
	dir := t.TempDir()

	img := newImage(t, dir, 24<<20)
	run(t, nil, mkfs, "-q", "-F", img)
	_, _, err := FormatFile(ctx, img, []byte("p"), fastFormat())
	var se *ExistingSignatureError
	if !errors.Is(err, ErrDeviceInUse) || !errors.As(err, &se) || !strings.HasPrefix(se.Kind, "ext") {
		t.Fatalf("format over ext4: %v", err)
	}
	opts := fastFormat()
	opts.Force = true
	v, vk, err := FormatFile(ctx, img, []byte("p"), opts)
	if err != nil {
		t.Fatalf("forced: %v", err)
	}
	vk.Wipe()
	v.Close()

	img2 := newImage(t, dir, 20<<20)
	kf := writeKeyFile(t, dir, []byte("x"))
	run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", kf, img2)
	if _, _, err := FormatFile(ctx, img2, []byte("p"), fastFormat()); !errors.As(err, &se) {
		t.Fatalf("format over LUKS2: %v", err)
	}
	// Our own volume is protected too.
	if _, _, err := FormatFile(ctx, img, []byte("p"), fastFormat()); !errors.Is(err, ErrDeviceInUse) {
		t.Fatalf("format over our LUKS2: %v", err)
	}
}

func TestLUKS1Refused(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-file", writeKeyFile(t, dir, []byte("x")), img)
	_, err := OpenFile(img, ReadOnly)
	if !errors.Is(err, ErrLUKS1) || !strings.Contains(err.Error(), "cryptsetup convert") {
		t.Fatalf("LUKS1: %v", err)
	}
}

func TestHeaderBackupRestoreInterop(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	pass := []byte("pass")
	kf := writeKeyFile(t, dir, pass)
	v, vk, err := FormatFile(ctx, img, pass, fastFormat())
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	ours := filepath.Join(dir, "ours.bak")
	if err := v.BackupFile(ours); err != nil {
		t.Fatal(err)
	}
	v.Close()
	theirs := filepath.Join(dir, "theirs.bak")
	run(t, nil, cs, "luksHeaderBackup", "--header-backup-file", theirs, img)
	a, _ := os.ReadFile(ours)
	b, _ := os.ReadFile(theirs)
	if len(a) != len(b) || len(a) != DefaultDataOffset {
		t.Errorf("backup sizes: ours %d, cryptsetup's %d", len(a), len(b))
	}
	// A backup opens as a (data-less) volume.
	bv, err := OpenFile(ours, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if k, _, err := bv.Unlock(ctx, pass); err != nil || !k.Equal(vk) {
		t.Fatalf("unlock backup: %v", err)
	}
	bv.Close()

	// Erase, then cryptsetup restores our backup.
	v, _ = OpenFile(img, ReadWrite)
	if err := v.Erase(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Unlock(ctx, pass); !errors.Is(err, ErrNoKeyslotAccepts) {
		t.Fatalf("after erase: %v", err)
	}
	v.Close()
	run(t, nil, cs, "luksHeaderRestore", "--batch-mode", "--header-backup-file", ours, img)
	run(t, nil, cs, "open", "--test-passphrase", "--key-file", kf, img)

	// Erase again, and we restore cryptsetup's backup.
	v, _ = OpenFile(img, ReadWrite)
	if err := v.Erase(ctx); err != nil {
		t.Fatal(err)
	}
	v.Close()
	if err := RestoreHeaderFile(img, theirs); err != nil {
		t.Fatal(err)
	}
	v, _ = OpenFile(img, ReadOnly)
	defer v.Close()
	if k, _, err := v.Unlock(ctx, pass); err != nil || !k.Equal(vk) {
		t.Fatalf("after restore: %v", err)
	}
	run(t, nil, cs, "open", "--test-passphrase", "--key-file", kf, img)
}

// TestDefaultSectorSizeLikeCryptsetup compares the sector size both tools choose
// when none is given, on an image whose data area is and is not 4096-aligned.
func TestDefaultSectorSizeLikeCryptsetup(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	kf := writeKeyFile(t, dir, []byte("x"))
	for _, size := range []int64{20 << 20, 20<<20 + 512, 20<<20 + 2048} {
		img := newImage(t, dir, size)
		run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", kf, img)
		v, err := OpenFile(img, ReadOnly)
		if err != nil {
			t.Fatal(err)
		}
		theirs := v.Metadata().SectorSize
		v.Close()
		opts := fastFormat()
		opts.Force = true
		v, vk, err := FormatFile(context.Background(), img, []byte("x"), opts)
		if err != nil {
			t.Fatal(err)
		}
		vk.Wipe()
		if ours := v.Metadata().SectorSize; ours != theirs {
			t.Errorf("size %d: we chose %d, cryptsetup %d", size, ours, theirs)
		}
		v.Close()
	}
}

// TestReencryptInProgressIsReadOnly opens a volume cryptsetup left mid-reencryption
// (mandatory requirement "online-reencrypt-v2", a "reencrypt" keyslot and three
// segments): readable and unlockable, never written or activated here.
func TestReencryptInProgressIsReadOnly(t *testing.T) {
	cs := needCryptsetup(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	kf := writeKeyFile(t, dir, []byte("x"))
	fast := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	run(t, nil, cs, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", kf}, fast...), img)...)
	want := dumpVolumeKey(t, cs, img, kf)
	run(t, nil, cs, append(append([]string{"reencrypt", "--init-only", "--batch-mode", "--key-file", kf}, fast...), img)...)
	v, err := OpenFile(img, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	md := v.Metadata()
	if !md.ReadOnly || len(md.Requirements) != 1 || md.Requirements[0] != "online-reencrypt-v2" {
		t.Fatalf("%+v", md)
	}
	vk, err := v.UnlockKeyslot(ctx, 0, []byte("x"))
	if err != nil || !bytes.Equal(vk.Bytes(), want) {
		t.Fatalf("unlock: %v", err)
	}
	if _, err := v.CryptTarget(vk); !errors.Is(err, ErrUnsupportedRequirement) {
		t.Fatalf("activation allowed: %v", err)
	}
	if _, err := v.AddToken([]byte(`{"type":"t","keyslots":[]}`), AnyToken); !errors.Is(err, ErrUnsupportedRequirement) {
		t.Fatalf("write allowed: %v", err)
	}
}

// TestCryptsetupLargeMetadataSecondaryScan damages the primary header of a cryptsetup
// volume with 256 KiB metadata: the secondary is found by scanning the spec's offsets.
func TestCryptsetupLargeMetadataSecondaryScan(t *testing.T) {
	cs := needCryptsetup(t)
	dir := t.TempDir()
	img := newImage(t, dir, 24<<20)
	kf := writeKeyFile(t, dir, []byte("x"))
	run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--luks2-metadata-size", "256k", "--luks2-keyslots-size", "4m",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", kf, img)
	want := dumpVolumeKey(t, cs, img, kf)
	corrupt(t, img, 0) // magic
	v, err := OpenFile(img, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	md := v.Metadata()
	if md.HeaderSize != 256<<10 || md.PrimaryValid || !md.SecondaryValid {
		t.Fatalf("%+v", md)
	}
	vk, _, err := v.Unlock(context.Background(), []byte("x"))
	if err != nil || !bytes.Equal(vk.Bytes(), want) {
		t.Fatalf("unlock: %v", err)
	}
	if err := v.Repair(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	run(t, nil, cs, "open", "--test-passphrase", "--key-file", kf, img)
}
