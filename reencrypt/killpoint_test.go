package reencrypt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// killChildEnv, set in the environment of the re-executed test binary, makes
// TestKillAtPoint's child run a rotation that kills itself: "IMAGE OFFSET NOMAP".
const killChildEnv = "REENCRYPT_KILL_CHILD"

// TestKillAtPoint kills a rotation (this test binary, re-executed, ends itself with
// SIGKILL) at an exact point of a hotzone's data write: in the middle of a checksum
// block, on a block boundary, at a hotzone's first byte; through the mapped data
// path and the copy path. What the kernel keeps is what a kill -9 keeps: every
// byte stored into a mapping, whole pages of a write call. The crashed image is
// then resumed by us, and a copy of it by cryptsetup (repair, reencrypt
// --resume-only); python3-cryptography must find the original plaintext under the
// key cryptsetup reads, in both.
func TestKillAtPoint(t *testing.T) {
	if spec := os.Getenv(killChildEnv); spec != "" {
		killChild(spec)
	}
	testpeer.Require(t, "cryptsetup")
	const hz = 1 << 20
	for _, c := range []struct {
		name  string
		at    int64 // data offset of the kill
		noMap bool
	}{
		{"mapped mid-block", 3*hz + 5*4096 + 1536, false},
		{"mapped block boundary", 3*hz + 7*4096, false},
		{"mapped hotzone start", 2 * hz, false},
		{"copy mid-block", 3*hz + 5*4096 + 1536, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, t.TempDir(), 24<<20, 4096)
			cmd := exec.Command(os.Args[0], "-test.run=^TestKillAtPoint$", "-test.count=1")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %v", killChildEnv, f.img, c.at, c.noMap))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child not killed: %v\n%s", err, out)
			}
			if !reencState(t, readImage(t, f.img)).Crashed() {
				t.Fatal("not killed inside a hotzone")
			}
			state, torn := f.hotzoneState(t)
			t.Logf("after the kill: %s", state)
			if torn > 0 {
				t.Errorf("the kill left %d blocks neither old nor new", torn)
			}
			cs := *f
			cs.img = filepath.Join(t.TempDir(), "img")
			writeImage(t, cs.img, readImage(t, f.img))
			cryptsetup(t, "repair", "--batch-mode", "--key-file", cs.kf, cs.img)
			if _, err := reencStateErr(readImage(t, cs.img)); err == nil {
				cryptsetup(t, "reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode", "--key-file", cs.kf, cs.img)
			}
			cs.checkPython(t)
			if err := resumeFile(t, f.img, []byte("passphrase"), &Options{HotzoneSize: hz, noMap: c.noMap}); err != nil {
				t.Fatal(err)
			}
			f.checkPython(t)
		})
	}
}

// killChild runs the rotation that kills itself (see killChildEnv); it exits only
// if the kill point is never reached.
func killChild(spec string) {
	var img string
	var at int64
	var noMap bool
	if _, err := fmt.Sscan(spec, &img, &at, &noMap); err != nil {
		fmt.Fprintln(os.Stderr, "bad", killChildEnv, err)
		os.Exit(2)
	}
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	st, err := fh.Stat()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	err = Rotate(context.Background(), fh, st.Size(), []byte("passphrase"), &Options{HotzoneSize: 1 << 20, Workers: 1,
		Keyslot: keyslotFast, DigestIterations: 1000, noMap: noMap, killAt: at})
	fmt.Fprintln(os.Stderr, "kill point not reached:", err)
	os.Exit(3)
}
