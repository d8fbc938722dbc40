//go:build !amd64 || purego

package reencrypt

const hasSHA2x = false

func sha256Blocks2(sa, sb *[8]uint32, pa, pb *byte, n int) { panic("unreachable") }
