package reencrypt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/luks2"
)

// TestKill9Loop runs the diskcryptd binary's rotation and kills it with SIGKILL at
// random moments, three times per round (the resumes too), then lets a resume
// finish; python3-cryptography then finds the original plaintext under the key
// cryptsetup reads. The seed is logged.
func TestKill9Loop(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	dir := t.TempDir()
	bin := filepath.Join(dir, "diskcryptd")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "../cmd/diskcryptd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := range 2 {
		f := newFixture(t, t.TempDir(), 80<<20, 4096)
		diskcryptd := func(args ...string) *exec.Cmd {
			return exec.Command(bin, append([]string{"reencrypt", "--key-file", f.kf, "--hotzone-size", "4M", "--pbkdf", "pbkdf2",
				"--pbkdf-force-iterations", "1000"}, append(args, f.img)...)...)
		}
		for kill := range 3 {
			args := []string{"--resume-only"}
			if kill == 0 {
				args = nil
			}
			cmd := diskcryptd(args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Kill after a random number of metadata commits (two per hotzone) and
			// a random fraction of a millisecond more.
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			base, k := seqid(t, f.img), uint64(rng.IntN(24)+1)
			var err error
			finished := false
		wait:
			for seqid(t, f.img) < base+k {
				select {
				case err = <-done:
					finished = true
					break wait
				case <-time.After(200 * time.Microsecond):
				}
			}
			delay := time.Duration(rng.IntN(1000)) * time.Microsecond
			if !finished {
				time.Sleep(delay)
				cmd.Process.Kill()
				err = <-done
			}
			state, torn := f.hotzoneState(t)
			t.Logf("round %d kill %d after %d commits + %v: %v %s; %s", round, kill, k, delay, err, strings.TrimSpace(out.String()), state)
			if torn > 0 {
				// Checksum recovery cannot tell which key a torn block is under.
				t.Errorf("round %d kill %d: the kill left %d blocks neither old nor new", round, kill, torn)
			}
		}
		// Finish: resume if something is in progress, else (killed before the
		// start, or done) rotate or nothing.
		out, err := diskcryptd("--resume-only").CombinedOutput()
		if err != nil && strings.Contains(string(out), "no re-encryption in progress") {
			if bytes.Equal(dumpKey(t, f.img, f.kf), f.key) {
				out, err = diskcryptd().CombinedOutput()
			} else {
				err = nil
			}
		}
		if err != nil {
			t.Fatalf("round %d: finishing: %v\n%s", round, err, out)
		}
		f.checkPython(t)
	}
}

// hotzoneState describes the image's re-encryption state for the log: the segments
// and, when a hotzone was being rewritten, how many of its checksum blocks hold the
// old ciphertext, the new one, or neither (a torn block, which checksum recovery
// cannot repair), computed from the fixture's plaintext with the reference XTS. It
// also returns the number of torn blocks.
func (f *fixture) hotzoneState(t testing.TB) (string, int) {
	t.Helper()
	v, err := luks2.OpenFile(f.img, luks2.ReadOnly)
	if err != nil {
		return fmt.Sprintf("open: %v", err), 0
	}
	defer v.Close()
	r, err := v.Reencryption()
	if err != nil {
		return fmt.Sprintf("state: %v", err), 0
	}
	var segs []string
	var hz luks2.Segment
	for _, s := range r.Active() {
		segs = append(segs, fmt.Sprintf("[%d,+%d %v]", int64(s.Offset)-f.dataOff, s.Size, s.Digests))
		if s.HasFlag(luks2.FlagInReencryption) {
			hz = s
		}
	}
	desc := "segments " + strings.Join(segs, " ")
	if hz.Size == 0 {
		return desc, 0
	}
	newVK, _, err := v.UnlockDigest(context.Background(), []byte("passphrase"), r.DigestNew)
	if err != nil {
		return desc + fmt.Sprintf("; new key: %v", err), 0
	}
	defer newVK.Wipe()
	off, n := int64(hz.Offset)-f.dataOff, int64(hz.Size)
	cur := make([]byte, n)
	fh, err := os.Open(f.img)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.ReadAt(cur, int64(hz.Offset)); err != nil {
		t.Fatal(err)
	}
	old := refXTS(t, f.key, f.ss, uint64(off/512), f.plain[off:off+n], false)
	nw := refXTS(t, newVK.Bytes(), f.ss, uint64(off/512), f.plain[off:off+n], false)
	const bs = 4096
	var nOld, nNew int
	var torn []int64
	for b := int64(0); b < n; b += bs {
		switch {
		case bytes.Equal(cur[b:b+bs], old[b:b+bs]):
			nOld++
		case bytes.Equal(cur[b:b+bs], nw[b:b+bs]):
			nNew++
		default:
			torn = append(torn, off+b)
		}
	}
	desc += fmt.Sprintf("; hotzone [%d,+%d): %d blocks old, %d new, %d neither", off, n, nOld, nNew, len(torn))
	if len(torn) > 0 {
		desc += fmt.Sprintf(" (first at %d)", torn[0])
	}
	return desc, len(torn)
}

// TestSIGINTStopsCleanly sends SIGINT to `diskcryptd reencrypt --json` mid-run: it
// exits non-zero saying it was interrupted, at a clean point (no hotzone in
// progress), after printing JSON progress lines; `--resume-only` then finishes.
func TestSIGINTStopsCleanly(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	dir := t.TempDir()
	bin := filepath.Join(dir, "diskcryptd")
	if out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "../cmd/diskcryptd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f := newFixture(t, t.TempDir(), 80<<20, 4096)
	args := []string{"reencrypt", "--json", "--key-file", f.kf, "--hotzone-size", "1M", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", f.img}
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	base := seqid(t, f.img)
	for seqid(t, f.img) < base+10 {
		time.Sleep(100 * time.Microsecond)
	}
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	if err == nil || !strings.Contains(stderr.String(), "interrupted") {
		t.Fatalf("want an interruption, got %v: %s", err, stderr.String())
	}
	if r := reencState(t, readImage(t, f.img)); r.Crashed() {
		t.Fatal("stopped inside a hotzone")
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var last progressJSON
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Total != int64(len(f.plain)) || last.Done == 0 || last.Done >= last.Total {
		t.Fatalf("progress lines %q: %v", lines, err)
	}
	if out, err := exec.Command(bin, "reencrypt", "--resume-only", "--key-file", f.kf, f.img).CombinedOutput(); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	f.checkPython(t)
}

// progressJSON is what a --json progress line carries.
type progressJSON struct {
	Done     int64 `json:"done_bytes"`
	Total    int64 `json:"total_bytes"`
	Finished bool  `json:"finished"`
}

// TestCryptsetupWaitsForOurRun starts `cryptsetup reencrypt --resume-only` while
// `diskcryptd reencrypt` runs: it waits for the device's metadata lock, then finds
// nothing to do, and the data is intact.
func TestCryptsetupWaitsForOurRun(t *testing.T) {
	cs := testpeer.Path(t, "cryptsetup")
	dir := t.TempDir()
	bin := filepath.Join(dir, "diskcryptd")
	if out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "../cmd/diskcryptd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f := newFixture(t, t.TempDir(), 80<<20, 4096)
	ours := exec.Command(bin, "reencrypt", "--key-file", f.kf, "--hotzone-size", "1M", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", f.img)
	if err := ours.Start(); err != nil {
		t.Fatal(err)
	}
	base := seqid(t, f.img)
	for seqid(t, f.img) < base+4 {
		time.Sleep(100 * time.Microsecond)
	}
	out, err := exec.Command(cs, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", f.kf, f.img).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not in progress") {
		t.Fatalf("cryptsetup did not wait for our run: %v %s", err, out)
	}
	if err := ours.Wait(); err != nil {
		t.Fatal(err)
	}
	f.checkPython(t)
}
