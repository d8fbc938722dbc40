//go:build amd64 && !purego

package reencrypt

import "golang.org/x/sys/cpu"

// sha256Blocks2 runs the SHA-256 compression function over n 64-byte blocks of
// pa into the state sa and, interleaved, over n blocks of pb into sb
// (sha256x2_amd64.s).
//
//go:noescape
func sha256Blocks2(sa, sb *[8]uint32, pa, pb *byte, n int)

// cpuidSHA reports whether the CPU has the SHA extensions.
func cpuidSHA() bool

// hasSHA2x is set when sha256Blocks2 can run (SHA extensions, SSSE3, SSE4.1).
var hasSHA2x = cpu.X86.HasSSSE3 && cpu.X86.HasSSE41 && cpuidSHA()
