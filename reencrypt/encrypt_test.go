package reencrypt

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/luks2"
)

// plainFixture is an unencrypted image: random data in its first size-reduce
// bytes, zeros after, ready for cryptsetup reencrypt --encrypt --reduce-device-size.
type plainFixture struct {
	img, kf string
	plain   []byte
	reduce  int64
}

func newPlainFixture(t testing.TB, size, reduce int64) *plainFixture {
	t.Helper()
	dir := t.TempDir()
	f := &plainFixture{img: filepath.Join(dir, "img"), kf: filepath.Join(dir, "key"), reduce: reduce}
	writeImage(t, f.kf, []byte("passphrase"))
	f.plain = make([]byte, size-reduce)
	rand.Read(f.plain)
	writeImage(t, f.img, append(bytes.Clone(f.plain), make([]byte, reduce)...))
	return f
}

func (f *plainFixture) initArgs() []string {
	return []string{"reencrypt", "--encrypt", "--force-offline-reencrypt", "--batch-mode", "--reduce-device-size", strconv.FormatInt(f.reduce, 10) + "",
		"--sector-size", "4096", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", f.kf}
}

// check verifies, with cryptsetup's key and python3-cryptography (or, with
// python false, golang.org/x/crypto/xts), that the data area holds the original
// plaintext, and that no re-encryption is left.
func (f *plainFixture) check(t testing.TB, python bool) {
	t.Helper()
	v, err := luks2.OpenFile(f.img, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	md := v.Metadata()
	_, rerr := v.Reencryption()
	v.Close()
	if !errors.Is(rerr, luks2.ErrNotReencrypting) {
		t.Fatalf("still in re-encryption: %v", rerr)
	}
	key := dumpKey(t, f.img, f.kf)
	img := readImage(t, f.img)
	var pt []byte
	if python {
		pt = pyDecrypt(t, key, md.SectorSize, md.DataOffset, int64(len(f.plain)), f.img)
	} else {
		pt = refXTS(t, key, md.SectorSize, md.IVTweak, img[md.DataOffset:md.DataOffset+int64(len(f.plain))], true)
	}
	if !bytes.Equal(pt, f.plain) {
		t.Fatalf("plaintext differs at byte %d", firstDiff(pt, f.plain))
	}
	// The moved copy of the first segment (plaintext) must be gone.
	if bytes.Contains(img[len(img)-int(f.reduce/2):], f.plain[:4096]) {
		t.Fatal("plaintext of the moved segment left at the end of the device")
	}
}

// TestCryptsetupEncryptInitWeFinish: cryptsetup initializes an in-place encryption
// (--init-only: header written, first segment moved to the end); we do the
// encryption.
func TestCryptsetupEncryptInitWeFinish(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	for _, c := range []struct{ size, reduce int64 }{{96 << 20, 32 << 20}, {100<<20 + 512<<10, 32 << 20}} {
		t.Run(fmt.Sprint(c.size), func(t *testing.T) {
			f := newPlainFixture(t, c.size, c.reduce)
			cryptsetup(t, append(f.initArgs(), "--init-only", f.img)...)
			if err := resumeFile(t, f.img, []byte("passphrase"), &Options{}); err != nil {
				t.Fatal(err)
			}
			f.check(t, true)
		})
	}
}

// TestCryptsetupEncryptKilledWeFinish kills cryptsetup's in-place encryption after a
// given number of metadata commits and finishes it.
func TestCryptsetupEncryptKilledWeFinish(t *testing.T) {
	cs := testpeer.Path(t, "cryptsetup")
	for _, commits := range []uint64{1, 6, 21} {
		t.Run(strconv.FormatUint(commits, 10), func(t *testing.T) {
			f := newPlainFixture(t, 160<<20, 8<<20)
			cmd := exec.Command(cs, append(f.initArgs(), f.img)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var base uint64
		wait:
			for {
				select {
				case <-done:
					t.Fatal("cryptsetup finished before the kill")
				case <-time.After(100 * time.Microsecond):
				}
				b := make([]byte, 24)
				fh, _ := os.Open(f.img)
				fh.ReadAt(b, 0)
				fh.Close()
				if string(b[:4]) != "LUKS" {
					continue
				}
				seq := seqid(t, f.img)
				if base == 0 {
					base = seq
				}
				if seq >= base+commits {
					break wait
				}
			}
			cmd.Process.Kill()
			<-done
			r := reencState(t, readImage(t, f.img))
			t.Logf("killed at seqid %d, hotzone in progress %v", seqid(t, f.img), r.Crashed())
			if err := resumeFile(t, f.img, []byte("passphrase"), &Options{}); err != nil {
				t.Fatal(err)
			}
			f.check(t, true)
		})
	}
}

// TestEncryptCrashAtEveryWrite resumes cryptsetup's in-place encryption (after
// --init-only) and cuts our writes at every write and in the middle of each, keeps
// all or only the synced writes, and resumes again (and, for a sample, lets
// cryptsetup resume): the plaintext must come out whole.
func TestEncryptCrashAtEveryWrite(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	f := newPlainFixture(t, 24<<20, 8<<20)
	cryptsetup(t, append(f.initArgs(), "--init-only", f.img)...)
	img := readImage(t, f.img)
	o := &Options{Workers: 1}
	full := newFaultDev(img, -1, 512)
	if err := Resume(context.Background(), full, int64(len(img)), []byte("passphrase"), o); err != nil {
		t.Fatal(err)
	}
	var cuts []int64
	for i, w := range full.writes {
		end := full.written
		if i+1 < len(full.writes) {
			end = full.writes[i+1]
		}
		cuts = append(cuts, w)
		if mid := w + (end-w)/2/512*512; mid > w {
			cuts = append(cuts, mid)
		}
	}
	if raceEnabled {
		var some []int64
		for i := 0; i < len(cuts); i += 5 {
			some = append(some, cuts[i])
		}
		cuts = some
	}
	t.Logf("%d writes, %d cut points", len(full.writes), len(cuts))
	for n, cut := range cuts {
		d := newFaultDev(img, cut, 512)
		if err := Resume(context.Background(), d, int64(len(img)), []byte("passphrase"), o); !errors.Is(err, errCrash) {
			t.Fatalf("cut %d: want a crash, got %v", cut, err)
		}
		for _, durable := range []bool{false, true} {
			after := d.cur
			if durable {
				after = d.durable
			}
			name := fmt.Sprintf("cut %d durable %v", cut, durable)
			// A sample goes to cryptsetup, except the state after the last hotzone
			// (all data encrypted, the moved copy not yet wiped), which cryptsetup
			// 2.6.1 cannot resume, its own run included.
			if r, err := reencStateErr(after); err == nil && n%17 == 8 && !durable && (r.Crashed() || linearLeft(r.Active()) > 0) {
				writeImage(t, f.img, after)
				cryptsetup(t, "repair", "--batch-mode", "--key-file", f.kf, f.img)
				if _, err := reencStateErr(readImage(t, f.img)); err == nil {
					cryptsetup(t, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", f.kf, f.img)
				}
				f.memCheck(t, name+" (cryptsetup)", readImage(t, f.img))
			}
			fd := newFaultDev(after, -1, 512)
			err := Resume(context.Background(), fd, int64(len(img)), []byte("passphrase"), o)
			if err != nil && !errors.Is(err, ErrNotInProgress) {
				t.Fatalf("%s: resume: %v", name, err)
			}
			f.memCheck(t, name, fd.cur)
		}
	}
}

// memCheck is check on an in-memory image, with our keyslot code for the key and
// golang.org/x/crypto/xts for the data.
func (f *plainFixture) memCheck(t testing.TB, name string, img []byte) {
	t.Helper()
	v, err := luks2.OpenDevice(newFaultDev(img, -1, 1), int64(len(img)), luks2.ReadOnly)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if _, err := v.Reencryption(); !errors.Is(err, luks2.ErrNotReencrypting) {
		t.Fatalf("%s: still in re-encryption: %v", name, err)
	}
	vk, _, err := v.Unlock(context.Background(), []byte("passphrase"))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer vk.Wipe()
	md := v.Metadata()
	// Under the race detector the reference XTS (Go code) is slow: check the first
	// 4 KiB of every 256 KiB.
	step, span := int64(len(f.plain)), int64(len(f.plain))
	if raceEnabled {
		step, span = 256<<10, 4096
	}
	for a := int64(0); a < int64(len(f.plain)); a += step {
		ct := img[md.DataOffset+a : md.DataOffset+a+span]
		pt := refXTS(t, vk.Bytes(), md.SectorSize, md.IVTweak+uint64(a/512), ct, true)
		if !bytes.Equal(pt, f.plain[a:a+span]) {
			t.Fatalf("%s: plaintext differs at byte %d", name, a+int64(firstDiff(pt, f.plain[a:a+span])))
		}
	}
	if bytes.Contains(img[len(img)-int(f.reduce/2):], f.plain[:4096]) {
		t.Fatalf("%s: plaintext of the moved segment left at the end of the device", name)
	}
}

// TestEncryptInPlace encrypts an unencrypted image in place here; cryptsetup opens
// it and python3-cryptography finds the original data, shifted behind the header.
func TestEncryptInPlace(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	for _, ss := range []int{512, 4096} {
		t.Run(strconv.Itoa(ss), func(t *testing.T) {
			f := newPlainFixture(t, 96<<20, 32<<20)
			fh, size := openFile(t, f.img)
			err := Encrypt(context.Background(), fh, size, f.reduce, []byte("passphrase"), &Options{Keyslot: keyslotFast}, &EncryptOptions{SectorSize: ss})
			fh.Close()
			if err != nil {
				t.Fatal(err)
			}
			cryptsetup(t, "open", "--test-passphrase", "--key-file", f.kf, f.img)
			f.check(t, true)
		})
	}
}

// TestEncryptInPlaceCrashAtEveryWrite cuts Encrypt's writes at every write (the
// move of the first segment, the start marker, the header, the hotzones) and in
// the middle of each, keeps all or only the synced writes, and calls Encrypt again
// (for a sample with a header on disk, cryptsetup repair + reencrypt --resume-only
// instead): the data must come out whole.
func TestEncryptInPlaceCrashAtEveryWrite(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	f := newPlainFixture(t, 24<<20, 8<<20)
	img := readImage(t, f.img)
	o := &Options{Workers: 1, Keyslot: keyslotFast}
	eo := &EncryptOptions{SectorSize: 4096}
	full := newFaultDev(img, -1, 512)
	if err := Encrypt(context.Background(), full, int64(len(img)), f.reduce, []byte("passphrase"), o, eo); err != nil {
		t.Fatal(err)
	}
	f.memCheck(t, "uncut", full.cur)
	var cuts []int64
	for i, w := range full.writes {
		end := full.written
		if i+1 < len(full.writes) {
			end = full.writes[i+1]
		}
		cuts = append(cuts, w)
		if mid := w + (end-w)/2/512*512; mid > w {
			cuts = append(cuts, mid)
		}
	}
	if raceEnabled {
		var some []int64
		for i := 0; i < len(cuts); i += 5 {
			some = append(some, cuts[i])
		}
		cuts = some
	}
	t.Logf("%d writes, %d cut points", len(full.writes), len(cuts))
	for n, cut := range cuts {
		d := newFaultDev(img, cut, 512)
		if err := Encrypt(context.Background(), d, int64(len(img)), f.reduce, []byte("passphrase"), o, eo); !errors.Is(err, errCrash) {
			t.Fatalf("cut %d: want a crash, got %v", cut, err)
		}
		for _, durable := range []bool{false, true} {
			after := d.cur
			if durable {
				after = d.durable
			}
			name := fmt.Sprintf("cut %d durable %v", cut, durable)
			if r, err := reencStateErr(after); err == nil && n%13 == 6 && !durable && (r.Crashed() || linearLeft(r.Active()) > 0) {
				writeImage(t, f.img, after)
				cryptsetup(t, "repair", "--batch-mode", "--key-file", f.kf, f.img)
				if _, err := reencStateErr(readImage(t, f.img)); err == nil {
					cryptsetup(t, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", f.kf, f.img)
				}
				f.memCheck(t, name+" (cryptsetup)", readImage(t, f.img))
			}
			fd := newFaultDev(after, -1, 512)
			err := Encrypt(context.Background(), fd, int64(len(img)), f.reduce, []byte("passphrase"), o, eo)
			if errors.Is(err, ErrNotInProgress) || errors.Is(err, ErrUnsupported) && isFinished(fd.cur) {
				err = nil
			}
			if err != nil {
				t.Fatalf("%s: encrypt again: %v", name, err)
			}
			f.memCheck(t, name, fd.cur)
		}
	}
}

// isFinished reports whether img is a LUKS2 volume with no re-encryption left.
func isFinished(img []byte) bool {
	_, err := reencStateErr(img)
	return errors.Is(err, luks2.ErrNotReencrypting)
}

// TestEncryptInPlaceExt4 encrypts a real ext4 (made by mkfs.ext4, 32 MiB short of
// the device) with the diskcryptd binary; the filesystem decrypted by
// python3-cryptography under the key cryptsetup reads passes e2fsck.
func TestEncryptInPlaceExt4(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	mkfs, fsck := testpeer.Path(t, "mkfs.ext4"), testpeer.Path(t, "e2fsck")
	dir := t.TempDir()
	img, kf := filepath.Join(dir, "img"), filepath.Join(dir, "key")
	writeImage(t, kf, []byte("passphrase"))
	writeImage(t, img, nil)
	os.Truncate(img, 96<<20)
	if out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	bin := filepath.Join(dir, "diskcryptd")
	if out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "../cmd/diskcryptd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "reencrypt", "--encrypt", "--reduce-device-size", "32M", "--sector-size", "4096", "--key-file", kf,
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img).CombinedOutput(); err != nil {
		t.Fatalf("diskcryptd reencrypt --encrypt: %v\n%s", err, out)
	}
	key := dumpKey(t, img, kf)
	pt := pyDecrypt(t, key, 4096, 16<<20, 64<<20, img)
	fsImg := filepath.Join(dir, "fs")
	writeImage(t, fsImg, pt)
	if out, err := exec.Command(fsck, "-fn", fsImg).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck on the decrypted filesystem: %v\n%s", err, out)
	}
}
