package reencrypt

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// TestSumBlocks4k checks the checksums of checksum resilience against
// crypto/sha256, for block counts that are odd and even (the two-way path and the
// single last block), on random and on structured data.
func TestSumBlocks4k(t *testing.T) {
	t.Logf("two-way SHA-256 (SHA extensions): %v", hasSHA2x)
	rnd := make([]byte, 33*checksumBlock)
	rand.Read(rnd)
	ramp := make([]byte, 33*checksumBlock)
	for i := range ramp {
		ramp[i] = byte(i * 7 / 3)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"zeros", make([]byte, 4*checksumBlock)},
		{"ones", bytes.Repeat([]byte{0xff}, 3*checksumBlock)},
		{"one block", rnd[:checksumBlock]},
		{"two blocks", rnd[:2*checksumBlock]},
		{"odd", rnd},
		{"even", rnd[checksumBlock:]},
		{"ramp", ramp},
		{"none", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := len(c.data) / checksumBlock
			got := make([]byte, n*32)
			sumBlocks4k(got, c.data)
			for i := range n {
				want := sha256.Sum256(c.data[i*checksumBlock : (i+1)*checksumBlock])
				if !bytes.Equal(got[i*32:(i+1)*32], want[:]) {
					t.Fatalf("block %d: %x, want %x", i, got[i*32:(i+1)*32], want)
				}
			}
		})
	}
}
