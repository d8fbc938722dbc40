// Package testpeer is the one place tests decide what to do when a real peer (a
// program such as cryptsetup, swtpm, tangd or pykmip-server, or a facility such as a
// loop device) is missing: on a workstation the test skips with the reason; under CI
// (CI=true in the environment, which .ci/run sets after installing every peer) the
// test fails, because a skipped check there is a check that silently did not run.
package testpeer

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run under CI, where every peer must be present.
func CI() bool { return os.Getenv("CI") == "true" }

// Require skips the test, or fails it under CI, unless every named program is on PATH.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	for _, name := range programs {
		if _, err := exec.LookPath(name); err != nil {
			Missing(t, "%s not installed: %v", name, err)
		}
	}
}

// Path returns the path of the named program, also looking in /usr/sbin and /sbin
// (which a non-root PATH often lacks), and skips the test, or fails it under CI, when
// the program is not installed.
func Path(t testing.TB, program string) string {
	t.Helper()
	if p, err := exec.LookPath(program); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin/", "/sbin/"} {
		if fi, err := os.Stat(dir + program); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return dir + program
		}
	}
	Missing(t, "%s not installed (see contrib/ci/packages.txt)", program)
	return ""
}

// Missing skips the test with the reason, or fails it with the reason under CI. Use it
// for anything a test needs that is not a program on PATH (a loop device, a kernel
// feature, a file a package installs).
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("required under CI: %s", msg)
	}
	t.Skip(msg)
}
