package probe

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testimg"
)

func makeImage(t testing.TB, size int64) string { return testimg.Sparse(t, size) }

func run(t testing.TB, stdin string, name string, args ...string) {
	t.Helper()
	testimg.Run(t, stdin, name, args...)
}

// blkid returns blkid's low-level probe of img as key=value pairs, or nil
// when blkid is not installed.
func blkid(t testing.TB, img string) map[string]string {
	t.Helper()
	p, err := exec.LookPath("blkid")
	if err != nil {
		return nil
	}
	out, _ := exec.Command(p, "-p", "-o", "export", img).Output()
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

func probeFile(t testing.TB, img string) *Signature {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := Probe(f, fi.Size())
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	return sig
}

func wipe(t testing.TB, img string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
}

func TestProbeRealTools(t *testing.T) {
	const M = 1 << 20
	luks := func(typ string) func(t *testing.T, img string) {
		return func(t *testing.T, img string) {
			key := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(key, []byte("test passphrase"), 0o600); err != nil {
				t.Fatal(err)
			}
			run(t, "", "cryptsetup", "luksFormat", "--batch-mode", "--type", typ,
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
				"--key-file", key, img)
		}
	}
	tests := []struct {
		name    string
		size    int64
		make    func(t *testing.T, img string)
		typ     string
		offset  int64
		blkidID string // blkid's key holding the same UUID, "" to skip
	}{
		{"ext2", 16 * M, func(t *testing.T, img string) { run(t, "", "mkfs.ext2", "-q", "-F", "-L", "lbl", img) }, "ext2", 1080, "UUID"},
		{"ext3", 16 * M, func(t *testing.T, img string) { run(t, "", "mkfs.ext3", "-q", "-F", img) }, "ext3", 1080, "UUID"},
		{"ext4", 16 * M, func(t *testing.T, img string) { run(t, "", "mkfs.ext4", "-q", "-F", img) }, "ext4", 1080, "UUID"},
		{"ext4-nojournal", 16 * M, func(t *testing.T, img string) {
			run(t, "", "mkfs.ext4", "-q", "-F", "-O", "^has_journal", img)
		}, "ext4", 1080, "UUID"},
		{"xfs", 320 * M, func(t *testing.T, img string) { run(t, "", "mkfs.xfs", "-q", "-f", img) }, "xfs", 0, "UUID"},
		{"btrfs", 128 * M, func(t *testing.T, img string) { run(t, "", "mkfs.btrfs", "-q", "-f", img) }, "btrfs", 65600, "UUID"},
		{"vfat12", 4 * M, func(t *testing.T, img string) { run(t, "", "mkfs.vfat", "-F", "12", img) }, "vfat", 0, "UUID"},
		{"vfat16", 32 * M, func(t *testing.T, img string) { run(t, "", "mkfs.vfat", "-F", "16", img) }, "vfat", 0, "UUID"},
		{"vfat32", 64 * M, func(t *testing.T, img string) {
			run(t, "", "mkfs.vfat", "-F", "32", "-s", "1", "-S", "512", img)
		}, "vfat", 0, "UUID"},
		{"swap", 16 * M, func(t *testing.T, img string) { run(t, "", "mkswap", "-L", "sw", img) }, "swap", 4086, "UUID"},
		{"dos", 16 * M, func(t *testing.T, img string) {
			run(t, ",,L\n", "sfdisk", "-q", "--label", "dos", img)
		}, "dos", 510, "PTUUID"},
		{"gpt", 16 * M, func(t *testing.T, img string) {
			run(t, ",,L\n", "sfdisk", "-q", "--label", "gpt", img)
		}, "gpt", 512, "PTUUID"},
		{"gpt-backup-only", 16 * M, func(t *testing.T, img string) {
			run(t, ",,L\n", "sfdisk", "-q", "--label", "gpt", img)
			wipe(t, img, 0, 34*512)
		}, "gpt", 16*M - 512, ""},
		{"luks1", 32 * M, luks("luks1"), "luks1", 0, "UUID"},
		{"luks2", 32 * M, luks("luks2"), "luks2", 0, "UUID"},
		{"luks2-secondary-only", 32 * M, func(t *testing.T, img string) {
			luks("luks2")(t, img)
			wipe(t, img, 0, 4096)
		}, "luks2", 16384, ""},
		{"zero", 16 * M, func(t *testing.T, img string) {}, "", 0, ""},
		{"random", 16 * M, func(t *testing.T, img string) {
			buf := make([]byte, 16*M)
			rand.New(rand.NewSource(1)).Read(buf)
			if err := os.WriteFile(img, buf, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img := makeImage(t, tc.size)
			tc.make(t, img)
			sig := probeFile(t, img)
			if tc.typ == "" {
				if sig != nil {
					t.Fatalf("Probe = %v, want nothing", sig)
				}
				return
			}
			if sig == nil {
				t.Fatalf("Probe found nothing, want %s", tc.typ)
			}
			if sig.Type != tc.typ || sig.Offset != tc.offset {
				t.Fatalf("Probe = %v, want %s at offset %d", sig, tc.typ, tc.offset)
			}
			if !strings.Contains(sig.String(), tc.typ) {
				t.Errorf("String() = %q lacks type", sig.String())
			}
			if tc.blkidID != "" {
				if m := blkid(t, img); m != nil && !strings.EqualFold(m[tc.blkidID], sig.UUID) {
					t.Errorf("UUID = %q, blkid %s = %q", sig.UUID, tc.blkidID, m[tc.blkidID])
				}
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = CheckEmpty(f, tc.size)
			var se *SignatureError
			if !errors.Is(err, ErrSignature) || !errors.As(err, &se) || se.Sig.Type != tc.typ {
				t.Errorf("CheckEmpty = %v, want a SignatureError for %s", err, tc.typ)
			}
		})
	}
}

func TestProbeShortAndUnknownSize(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 1100, 4096, 70000} {
		data := make([]byte, n)
		for _, size := range []int64{int64(n), -1} {
			sig, err := Probe(bytes.NewReader(data), size)
			if err != nil || sig != nil {
				t.Errorf("Probe(%d zero bytes, size %d) = %v, %v; want nil, nil", n, size, sig, err)
			}
		}
	}
	// A size larger than the reader is an I/O error, not absence.
	if _, err := Probe(bytes.NewReader(make([]byte, 100)), 1<<20); err == nil {
		t.Error("Probe with size beyond the data: no error")
	}
}

func TestProbeAll(t *testing.T) {
	img := make([]byte, 1<<20)
	copy(img, "LUKS\xba\xbe\x00\x02")
	copy(img[0x4000:], "SKUL\xba\xbe\x00\x02")
	img[0x4000+256+6] = 0x40 // hdr_offset = 0x4000 (big endian)
	sigs, err := ProbeAll(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if len(sigs) != 2 || sigs[0].Offset != 0 || sigs[1].Offset != 0x4000 {
		t.Fatalf("ProbeAll = %v, want luks2 at 0 and at 16384", sigs)
	}
}

func FuzzProbe(f *testing.F) {
	f.Add([]byte("LUKS\xba\xbe\x00\x02"), int64(-1))
	f.Add([]byte("XFSB\x00\x00\x10\x00"), int64(512))
	seed := make([]byte, 4096)
	seed[510], seed[511] = 0x55, 0xAA
	copy(seed[54:], "FAT16   ")
	seed[446+4] = 0x83
	f.Add(seed, int64(4096))
	ext := make([]byte, 2048)
	ext[1080], ext[1081] = 0x53, 0xEF
	f.Add(ext, int64(2048))
	// A real header cryptsetup 2.6 wrote (both copies): the primary, and the
	// secondary alone as the scan finds it after a wiped primary.
	if hdr, err := os.ReadFile("../../luks2/testdata/cryptsetup-2.6-header.bin"); err == nil {
		f.Add(hdr, int64(len(hdr)))
		wiped := bytes.Clone(hdr)
		clear(wiped[:4096])
		f.Add(wiped, int64(-1))
	} else {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, size int64) {
		if size > int64(len(data)) {
			size = int64(len(data))
		}
		sig, err := Probe(bytes.NewReader(data), size)
		if err != nil {
			t.Fatalf("Probe: %v", err)
		}
		_ = sig.String()
		if _, err := ProbeAll(bytes.NewReader(data), -1); err != nil {
			t.Fatalf("ProbeAll: %v", err)
		}
	})
}
