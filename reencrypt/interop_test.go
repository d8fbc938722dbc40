package reencrypt

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/luks2"
)

// TestRotateCryptsetupReads rotates the key of cryptsetup volumes (4096- and
// 512-byte sectors, checksum and journal resilience); cryptsetup then opens them
// with the passphrase, its key differs from the old one, and python3-cryptography
// finds the original plaintext under it.
func TestRotateCryptsetupReads(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	for _, c := range []struct {
		ss    int
		res   string
		hz    int64
		extra []string
	}{
		{4096, "checksum", 1 << 20, []string{"nomap"}}, // read and write, no mapping
		{4096, "checksum", 1 << 20, nil},
		{512, "checksum", 3 << 20, nil},
		{4096, "journal", 0, nil},
		{4096, "checksum", 0, []string{"--key-size", "256"}},
		// A data area that is not a whole number of 4 KiB checksum blocks.
		{512, "checksum", 1 << 20, []string{"+512"}},
	} {
		t.Run(c.res+"-"+strconv.Itoa(c.ss)+strings.Join(c.extra, ""), func(t *testing.T) {
			size, noMap := int64(24<<20), false
			if len(c.extra) == 1 && c.extra[0] == "+512" {
				size, c.extra = size+512, nil
			}
			if len(c.extra) == 1 && c.extra[0] == "nomap" {
				noMap, c.extra = true, nil
			}
			f := newFixture(t, t.TempDir(), size, c.ss, c.extra...)
			o := &Options{Resilience: c.res, HotzoneSize: c.hz, Keyslot: keyslotFast, DigestIterations: 1000, noMap: noMap}
			if err := rotateFile(t, f.img, []byte("passphrase"), o); err != nil {
				t.Fatal(err)
			}
			cryptsetup(t, "open", "--test-passphrase", "--key-file", f.kf, f.img)
			f.checkPython(t)
		})
	}
}

// TestCryptsetupInitWeFinish: cryptsetup initializes the re-encryption
// (--init-only); we resume it to the end.
func TestCryptsetupInitWeFinish(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	for _, res := range []string{"checksum", "journal"} {
		t.Run(res, func(t *testing.T) {
			f := newFixture(t, t.TempDir(), 24<<20, 4096)
			cryptsetup(t, "reencrypt", "--init-only", "--batch-mode", "--resilience", res, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", f.kf, f.img)
			if err := resumeFile(t, f.img, []byte("passphrase"), &Options{HotzoneSize: 1 << 20}); err != nil {
				t.Fatal(err)
			}
			f.checkPython(t)
		})
	}
}

// TestCryptsetupKilledWeFinish kills cryptsetup (SIGKILL) during its run once
// its header shows a given number of commits (two per hotzone), and finishes with
// Resume, which recovers the hotzone cryptsetup left half written.
func TestCryptsetupKilledWeFinish(t *testing.T) {
	cs := testpeer.Path(t, "cryptsetup")
	for _, c := range []struct {
		commits uint64
		args    []string
	}{
		{9, []string{"--hotzone-size", "4M"}},
		{24, []string{"--hotzone-size", "4M"}},
		{3, nil}, // cryptsetup's default: the whole 64 MiB in one hotzone
		{7, []string{"--resilience", "journal"}},
	} {
		t.Run(strconv.FormatUint(c.commits, 10)+strings.Join(c.args, ""), func(t *testing.T) {
			commits := c.commits
			f := newFixture(t, t.TempDir(), 80<<20, 4096)
			base := seqid(t, f.img)
			args := append([]string{"reencrypt", "--force-offline-reencrypt", "--batch-mode", "--pbkdf", "pbkdf2",
				"--pbkdf-force-iterations", "1000", "--key-file", f.kf}, c.args...)
			cmd := exec.Command(cs, append(args, f.img)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(60 * time.Second)
			for seqid(t, f.img) < base+commits && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			cmd.Process.Kill()
			cmd.Wait()
			fh, size := openFile(t, f.img)
			v, err := luks2.OpenDevice(fh, size, luks2.ReadOnly)
			if err != nil {
				t.Fatal(err)
			}
			r, err := v.Reencryption()
			fh.Close()
			if err != nil {
				t.Fatalf("cryptsetup was not mid-run when killed: %v", err)
			}
			t.Logf("killed at seqid %d, hotzone in progress: %v", seqid(t, f.img), r.Crashed())
			if err := resumeFile(t, f.img, []byte("passphrase"), &Options{}); err != nil {
				t.Fatal(err)
			}
			f.checkPython(t)
		})
	}
}

// seqid reads the primary header's sequence id.
func seqid(t testing.TB, img string) uint64 {
	t.Helper()
	fh, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var b [8]byte
	fh.ReadAt(b[:], 16)
	return binary.BigEndian.Uint64(b[:])
}

// TestWeStartCryptsetupFinishes interrupts our run after its first hotzone (clean
// stop) and in the middle of a hotzone (crash), and lets cryptsetup finish:
// `cryptsetup repair` recovers the hotzone, `reencrypt --resume-only` goes on.
func TestWeStartCryptsetupFinishes(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	for _, res := range []string{"checksum", "journal"} {
		t.Run(res+"-clean", func(t *testing.T) {
			f := newFixture(t, t.TempDir(), 24<<20, 4096)
			ctx, cancel := context.WithCancel(context.Background())
			o := &Options{Resilience: res, HotzoneSize: 1 << 20, Keyslot: keyslotFast, DigestIterations: 1000,
				Progress: func(p Progress) {
					if p.Done > 0 {
						cancel()
					}
				}}
			fh, size := openFile(t, f.img)
			err := Rotate(ctx, fh, size, []byte("passphrase"), o)
			fh.Close()
			if !errors.Is(err, ErrInterrupted) {
				t.Fatalf("want ErrInterrupted, got %v", err)
			}
			cryptsetup(t, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", f.kf, f.img)
			f.checkPython(t)
		})
		t.Run(res+"-crash", func(t *testing.T) {
			f := newFixture(t, t.TempDir(), 24<<20, 4096)
			img := readImage(t, f.img)
			// Crash 1 MiB into the data write of the second hotzone.
			d := newFaultDev(img, -1, 4096)
			o := &Options{Resilience: res, HotzoneSize: 2 << 20, Keyslot: keyslotFast, DigestIterations: 1000, Workers: 1}
			if err := Rotate(context.Background(), d, int64(len(img)), []byte("passphrase"), o); err != nil {
				t.Fatal(err)
			}
			d2 := newFaultDev(img, d.dataWrite(t, f.dataOff, 1, 1<<20), 4096)
			if err := Rotate(context.Background(), d2, int64(len(img)), []byte("passphrase"), o); !errors.Is(err, errCrash) {
				t.Fatalf("want crash, got %v", err)
			}
			writeImage(t, f.img, d2.cur)
			if r := reencState(t, d2.cur); !r.Crashed() {
				t.Fatal("the cut did not fall inside a hotzone")
			}
			cryptsetup(t, "repair", "--batch-mode", "--key-file", f.kf, f.img)
			cryptsetup(t, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", f.kf, f.img)
			f.checkPython(t)
		})
	}
}

// TestMappedFaultIsAnError: a mapped hotzone the device cannot back (here: beyond
// the end of a file truncated behind the engine's back, which the kernel reports as
// SIGBUS, like a disk read error) makes the run fail with an error, not crash.
func TestMappedFaultIsAnError(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	f := newFixture(t, t.TempDir(), 24<<20, 4096)
	fh, size := openFile(t, f.img)
	defer fh.Close()
	if err := fh.Truncate(f.dataOff + 3<<19); err != nil {
		t.Fatal(err)
	}
	err := Rotate(context.Background(), fh, size, []byte("passphrase"), &Options{HotzoneSize: 1 << 20, Keyslot: keyslotFast, DigestIterations: 1000})
	if err == nil || !strings.Contains(err.Error(), "mapped hotzone") {
		t.Fatalf("want a mapped I/O error, got %v", err)
	}
}

// TestCryptsetupSectorSizeChangeWeFinish: cryptsetup starts a re-encryption that
// also changes the sector size (512 to 4096 bytes); we finish it, and the data
// decrypts with the new key in 4096-byte sectors.
func TestCryptsetupSectorSizeChangeWeFinish(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	f := newFixture(t, t.TempDir(), 24<<20, 512)
	cryptsetup(t, "reencrypt", "--init-only", "--force-offline-reencrypt", "--batch-mode", "--sector-size", "4096", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", f.kf, f.img)
	if err := resumeFile(t, f.img, []byte("passphrase"), &Options{HotzoneSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := luks2.OpenFile(f.img, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	ss := v.Metadata().SectorSize
	v.Close()
	if ss != 4096 {
		t.Fatalf("sector size %d after the run", ss)
	}
	f.ss = 4096
	f.checkPython(t)
}
