package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestTangUnlockSpeedReport (make bench; TANG_SPEED_REPORT=1) binds 16 volumes to
// one tangd and times "diskcryptd unlock --test" of all 16 (one process, parallel,
// shared connections, keyslots opened too) against a loop of "clevis luks pass"
// over the same volumes and server, and prints the ratio. It judges nothing: the
// machine is shared and noisy.
func TestTangUnlockSpeedReport(t *testing.T) {
	if os.Getenv("TANG_SPEED_REPORT") == "" {
		t.Skip("set TANG_SPEED_REPORT=1 (make bench)")
	}
	testpeer.Require(t, "cryptsetup", "clevis")
	const n = 16
	srv := tangtest.Start(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "diskcryptd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	key := writeSecret(t, dir, "key", "correct horse")
	var imgs []string
	for range n {
		img := newClevisImage(t, key)
		mustCLI(t, "", nil, "enroll", "clevis", "--key-file", key, "--pin", "tang",
			"--tang-thumbprint", srv.SigningThumbprints()[0], "--config", fmt.Sprintf(`{"url":%q}`, srv.URL), img)
		imgs = append(imgs, img)
	}
	best := func(f func()) time.Duration {
		var b time.Duration
		for range 3 {
			start := time.Now()
			f()
			if d := time.Since(start); b == 0 || d < b {
				b = d
			}
		}
		return b
	}
	ours := best(func() {
		cmd := exec.Command(bin, append([]string{"unlock", "--test"}, imgs...)...)
		cmd.Env = append(os.Environ(), "DISKCRYPTD_AUDIT_LOG="+filepath.Join(dir, "audit.jsonl"))
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Count(string(out), "volume key recovered") != n {
			t.Fatalf("diskcryptd unlock --test: %v\n%s", err, out)
		}
	})
	theirs := best(func() {
		for _, img := range imgs {
			if out, err := exec.Command("clevis", "luks", "pass", "-d", img, "-s", "1").Output(); err != nil || len(out) == 0 {
				t.Fatalf("clevis luks pass %s: %v", img, err)
			}
		}
	})
	fmt.Printf("tang unlock of %d volumes (best of 3): diskcryptd unlock --test %v, clevis luks pass loop %v (%.0f ms/volume): %.1fx\n",
		n, ours.Round(time.Millisecond), theirs.Round(time.Millisecond), float64(theirs.Milliseconds())/n, float64(theirs)/float64(ours))
}
