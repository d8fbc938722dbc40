// Package xts implements AES-XTS (IEEE 1619-2007) over whole disk sectors, numbered
// the way dm-crypt's plain64 IV generator numbers them.
//
// A sector's tweak is its number in 512-byte units, as a 64-bit little-endian value
// zero-extended to 128 bits: the i-th sector of a call has tweak
// sector + i*sectorSize/512. This is dm-crypt's "plain64" without "iv_large_sectors",
// which is what LUKS2 uses, also for 4096-byte sectors. Callers add any iv_tweak
// themselves.
package xts

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
)

// ErrKeySize is returned by New for a key that is neither 32 nor 64 bytes long.
var ErrKeySize = errors.New("xts: key must be 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS)")

// Cipher is AES-XTS with one key. It is safe for concurrent use once created.
type Cipher struct {
	k1, k2 cipher.Block
	key    []byte
}

// New returns a Cipher for a 256-bit (AES-128-XTS) or 512-bit (AES-256-XTS) key.
// The key is copied.
func New(key []byte) (*Cipher, error) {
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("%w: got %d bytes", ErrKeySize, len(key))
	}
	k := append([]byte(nil), key...)
	half := len(k) / 2
	k1, err := aes.NewCipher(k[:half])
	if err != nil {
		return nil, err
	}
	k2, err := aes.NewCipher(k[half:])
	if err != nil {
		return nil, err
	}
	return &Cipher{k1: k1, k2: k2, key: k}, nil
}

func checkSectors(dst, src []byte, sectorSize int) {
	switch sectorSize {
	case 512, 1024, 2048, 4096:
	default:
		panic("xts: sector size must be 512, 1024, 2048 or 4096")
	}
	if len(src)%sectorSize != 0 {
		panic("xts: input is not a whole number of sectors")
	}
	if len(dst) < len(src) {
		panic("xts: output smaller than input")
	}
}

// EncryptSectors encrypts src, whole sectors of sectorSize bytes, into dst. sector is
// the number of the first sector in 512-byte units. dst and src may be the same slice.
// It panics if sectorSize is not 512, 1024, 2048 or 4096, if len(src) is not a multiple
// of sectorSize, or if dst is shorter than src.
func (c *Cipher) EncryptSectors(dst, src []byte, sectorSize int, sector uint64) {
	checkSectors(dst, src, sectorSize)
	for off := 0; off < len(src); off += sectorSize {
		c.sector(dst[off:off+sectorSize], src[off:off+sectorSize], sector, true)
		sector += uint64(sectorSize / 512)
	}
}

// DecryptSectors is the inverse of EncryptSectors, with the same arguments and panics.
func (c *Cipher) DecryptSectors(dst, src []byte, sectorSize int, sector uint64) {
	checkSectors(dst, src, sectorSize)
	for off := 0; off < len(src); off += sectorSize {
		c.sector(dst[off:off+sectorSize], src[off:off+sectorSize], sector, false)
		sector += uint64(sectorSize / 512)
	}
}

func (c *Cipher) sector(dst, src []byte, num uint64, encrypt bool) {
	var t [16]byte
	for i := 0; i < 8; i++ {
		t[i] = byte(num >> (8 * i))
	}
	c.k2.Encrypt(t[:], t[:])
	var b [16]byte
	for off := 0; off < len(src); off += 16 {
		for i := range b {
			b[i] = src[off+i] ^ t[i]
		}
		if encrypt {
			c.k1.Encrypt(b[:], b[:])
		} else {
			c.k1.Decrypt(b[:], b[:])
		}
		for i := range b {
			dst[off+i] = b[i] ^ t[i]
		}
		mul2(&t)
	}
}

// mul2 multiplies the tweak by x in GF(2^128), little-endian as IEEE 1619 defines it.
func mul2(t *[16]byte) {
	carry := t[15] >> 7
	for i := 15; i > 0; i-- {
		t[i] = t[i]<<1 | t[i-1]>>7
	}
	t[0] = t[0]<<1 ^ 0x87*carry
}

// Close zeroes the key this Cipher holds. The Cipher must not be used afterwards.
func (c *Cipher) Close() {
	clear(c.key)
	c.k1, c.k2 = nil, nil
}
