// Package testimg makes the scratch image files tests format, probe and map, and
// runs the real tools on them, so that each test package does not carry its own copy.
package testimg

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// Sparse returns the path of a new sparse file of size bytes, mode 0600, in a
// directory the test removes.
func Sparse(t testing.TB, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	return img
}

// Run runs the named program (found through testpeer.Path: a missing program skips
// the test, or fails it under CI) with stdin and fails the test with its output when
// it fails. It returns the combined output.
func Run(t testing.TB, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(testpeer.Path(t, name), args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Loop attaches img to a free loop device with the given logical sector size (0: the
// default, 512) and returns its node; it is detached at cleanup. Where loop devices
// cannot be used the test skips, or fails under CI.
func Loop(t testing.TB, img string, sectorSize int) string {
	t.Helper()
	losetup := testpeer.Path(t, "losetup")
	args := []string{"-f", "--show"}
	if sectorSize > 0 {
		args = append(args, "-b", strconv.Itoa(sectorSize))
	}
	out, err := exec.Command(losetup, append(args, img)...).CombinedOutput()
	if err != nil {
		testpeer.Missing(t, "cannot attach a loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", dev).Run() })
	return dev
}
