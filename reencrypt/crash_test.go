package reencrypt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

const (
	// crashSample: every crashSample-th cut is also finished by cryptsetup (about a
	// second each).
	crashSample  = 12
	crashDataOff = 2 << 20
	crashSize    = crashDataOff + 256<<10
)

// TestCrashAtEveryWrite cuts a rotation's writes at every write boundary and in the
// middle of every write (rounded down to the device's atomic unit: 4096 bytes for
// checksum resilience, which relies on whole-block writes; 512 for journal), keeps
// either everything written so far or only what was synced, and resumes: the
// volume must end with exactly the original plaintext under the key the passphrase
// opens (checked with golang.org/x/crypto/xts, not our XTS). A sample of the cuts
// is also finished by cryptsetup (repair, then reencrypt --resume-only).
func TestCrashAtEveryWrite(t *testing.T) {
	for _, c := range []struct {
		res  string
		atom int64
	}{{"checksum", 4096}, {"journal", 512}} {
		t.Run(c.res, func(t *testing.T) {
			img, plain, key := memVolume(t, crashSize, crashDataOff, 4096, "pw")
			o := func() *Options {
				return &Options{Resilience: c.res, HotzoneSize: 64 << 10, Workers: 1, Keyslot: keyslotFast, DigestIterations: 1000}
			}
			full := newFaultDev(img, -1, c.atom)
			if err := Rotate(context.Background(), full, crashSize, []byte("pw"), o()); err != nil {
				t.Fatal(err)
			}
			memPlain(t, full.cur, "pw", plain)
			var cuts []int64
			for i, w := range full.writes {
				end := full.written
				if i+1 < len(full.writes) {
					end = full.writes[i+1]
				}
				cuts = append(cuts, w)
				if mid := w + (end-w)/2/c.atom*c.atom; mid > w {
					cuts = append(cuts, mid)
				}
			}
			t.Logf("%d writes, %d bytes, %d cut points", len(full.writes), full.written, len(cuts))
			if raceEnabled {
				// Every fourth cut: the race detector makes each one slow.
				var some []int64
				for i := 0; i < len(cuts); i += 4 {
					some = append(some, cuts[i])
				}
				cuts = some
			}
			hot, restarted := 0, 0
			for n, cut := range cuts {
				d := newFaultDev(img, cut, c.atom)
				err := Rotate(context.Background(), d, crashSize, []byte("pw"), o())
				if !errors.Is(err, errCrash) {
					t.Fatalf("cut %d: want a crash, got %v", cut, err)
				}
				for _, durable := range []bool{false, true} {
					after := d.cur
					if durable {
						after = d.durable
					}
					name := fmt.Sprintf("cut %d durable %v", cut, durable)
					if r, err := reencStateErr(after); err == nil && r.Crashed() {
						hot++
					}
					if n%crashSample == crashSample/2 && !durable {
						cryptsetupFinish(t, name, after, plain)
					}
					fd := newFaultDev(after, -1, c.atom)
					err := Resume(context.Background(), fd, crashSize, []byte("pw"), o())
					if errors.Is(err, ErrNotInProgress) && bytes.Equal(unlockKey(t, fd.cur, "pw"), key) {
						// Cut before the run began: starting again must work.
						restarted++
						err = Rotate(context.Background(), fd, crashSize, []byte("pw"), o())
						if bytes.Equal(unlockKey(t, fd.cur, "pw"), key) {
							t.Fatalf("%s: restarted rotation kept the old key", name)
						}
					}
					if err != nil && !errors.Is(err, ErrNotInProgress) {
						t.Fatalf("%s: resume: %v", name, err)
					}
					memPlain(t, fd.cur, "pw", plain)
				}
			}
			if restarted == 0 || hot == 0 {
				t.Fatalf("cuts: %d inside a hotzone, %d before the start", hot, restarted)
			}
		})
	}
}

// cryptsetupFinish writes img to a file and lets cryptsetup finish what is in
// progress, then checks the plaintext.
func cryptsetupFinish(t *testing.T, name string, img, plain []byte) {
	t.Helper()
	cs := testpeer.Path(t, "cryptsetup")
	dir := t.TempDir()
	p, kf := filepath.Join(dir, "img"), filepath.Join(dir, "key")
	writeImage(t, p, img)
	writeImage(t, kf, []byte("pw"))
	if _, err := reencStateErr(img); err != nil {
		return // nothing in progress
	}
	if out, err := exec.Command(cs, "repair", "--batch-mode", "--key-file", kf, p).CombinedOutput(); err != nil {
		t.Fatalf("%s: cryptsetup repair: %v\n%s", name, err, out)
	}
	// Repair of a crash in the last hotzone also finishes the run.
	if _, err := reencStateErr(readImage(t, p)); err == nil {
		out, err := exec.Command(cs, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", kf, p).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: cryptsetup reencrypt --resume-only: %v\n%s", name, err, out)
		}
	}
	memPlain(t, readImage(t, p), "pw", plain)
}
