package reencrypt

import (
	"crypto/sha256"
	"encoding/binary"
)

// checksumBlock is the checksum block size that sumBlocks4k serves.
const checksumBlock = 4096

// sha256IV is the initial SHA-256 state (FIPS 180-4, 5.3.3).
var sha256IV = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

// sha256Pad4k is the padding block that ends a 4096-byte message: 0x80, zeros,
// and the length in bits (32768) as a big-endian 64-bit integer.
var sha256Pad4k = [64]byte{0: 0x80, 62: 0x80}

// sumBlocks4k writes the SHA-256 of each 4096-byte block of src to dst (32 bytes
// each), as checksum resilience stores them. With the SHA extensions two blocks
// are hashed at once (sha256Blocks2), which doubles the throughput of one core;
// otherwise, and for an odd last block, crypto/sha256 hashes them.
func sumBlocks4k(dst, src []byte) {
	n := len(src) / checksumBlock
	i := 0
	if hasSHA2x {
		for ; i+1 < n; i += 2 {
			a, b := sha256IV, sha256IV
			sha256Blocks2(&a, &b, &src[i*checksumBlock], &src[(i+1)*checksumBlock], checksumBlock/64)
			sha256Blocks2(&a, &b, &sha256Pad4k[0], &sha256Pad4k[0], 1)
			for j := range 8 {
				binary.BigEndian.PutUint32(dst[i*32+4*j:], a[j])
				binary.BigEndian.PutUint32(dst[(i+1)*32+4*j:], b[j])
			}
		}
	}
	for ; i < n; i++ {
		s := sha256.Sum256(src[i*checksumBlock : (i+1)*checksumBlock])
		copy(dst[i*32:], s[:])
	}
}
