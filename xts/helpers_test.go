package xts

import (
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// forEachImplementation runs f once per implementation of this build, as a subtest
// named after it, skipping those the CPU cannot run (like crypto's
// TestAllImplementations).
func forEachImplementation(t *testing.T, f func(t *testing.T, im *implementation)) {
	t.Helper()
	for _, im := range implementations {
		t.Run(im.name, func(t *testing.T) {
			if !im.available {
				t.Skipf("%s: not supported by this CPU", im.name)
			}
			f(t, im)
		})
	}
}

func mustNew(t testing.TB, key []byte, im *implementation) *Cipher {
	t.Helper()
	c, err := newWith(key, im)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// missingPeer is testpeer.Missing: it skips the test because an external program it
// checks against is missing, or fails it under CI, where every peer is installed.
func missingPeer(t *testing.T, format string, args ...any) {
	t.Helper()
	testpeer.Missing(t, format, args...)
}
