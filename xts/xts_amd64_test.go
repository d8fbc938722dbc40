//go:build amd64 && !purego

package xts

import (
	"testing"

	"golang.org/x/sys/cpu"
)

// TestFastPathChosen guards against a silent fall back to a slower path on hardware
// that can run the fast one.
func TestFastPathChosen(t *testing.T) {
	want := "generic"
	switch {
	case cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL &&
		cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ:
		want = "VAES512"
	case cpu.X86.HasAES && cpu.X86.HasSSE41:
		want = "AESNI"
	}
	c, err := New(make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.impl.name; got != want {
		t.Fatalf("New chose %s on a CPU that supports %s", got, want)
	}
	t.Logf("implementation: %s", c.impl.name)
}
