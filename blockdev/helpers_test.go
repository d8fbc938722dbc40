package blockdev

import (
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testimg"
)

func makeImage(t testing.TB, size int64) string { return testimg.Sparse(t, size) }

func run(t testing.TB, stdin string, name string, args ...string) {
	t.Helper()
	testimg.Run(t, stdin, name, args...)
}
