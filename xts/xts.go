// Package xts implements AES-XTS (IEEE 1619-2007) over whole disk sectors, numbered
// the way dm-crypt's plain64 IV generator numbers them.
//
// A sector's tweak is its number in 512-byte units, as a 64-bit little-endian value
// zero-extended to 128 bits: the i-th sector of a call has tweak
// sector + i*sectorSize/512. This is dm-crypt's "plain64" without "iv_large_sectors",
// which is what LUKS2 uses, also for 4096-byte sectors. Callers add any iv_tweak
// themselves. Sectors are whole multiples of the AES block, so ciphertext stealing
// (IEEE 1619-2007 section 5.3.2) never occurs.
//
// # Implementations
//
// On amd64 the hot loop is assembly, chosen once from the CPU's features: with VAES,
// VPCLMULQDQ and AVX-512 it keeps 16 blocks in four ZMM registers and computes the
// tweaks in vector registers; with AES-NI it keeps 8 blocks in flight. Elsewhere, and
// under the purego build tag, a table-driven Go implementation runs. The table-driven
// code is not constant-time; it is a fallback, not a target.
//
// The key schedule lives in the Cipher, not in crypto/aes, so that Close can zero it.
package xts

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
)

// ErrKeySize is returned by New for a key that is neither 32 nor 64 bytes long.
var ErrKeySize = errors.New("xts: key must be 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS)")

// schedule is the expanded key of both halves of an XTS key.
type schedule struct {
	enc1, dec1 roundKeys // data key, encryption and decryption order
	enc2       roundKeys // tweak key, encryption only
	rounds     int       // 10 or 14
}

// sectorFunc en- or decrypts len(src)/sectorSize whole sectors, the first numbered
// sector. Its arguments have been checked by the caller.
type sectorFunc func(ks *schedule, dst, src []byte, sectorSize int, sector uint64)

// implementation is one way of computing XTS; see implementations.
type implementation struct {
	name      string
	available bool
	encrypt   sectorFunc
	decrypt   sectorFunc
}

// Cipher is AES-XTS with one key. It is safe for concurrent use once created, until
// Close.
type Cipher struct {
	ks     schedule
	impl   *implementation
	closed bool
}

// New returns a Cipher for a 256-bit (AES-128-XTS) or 512-bit (AES-256-XTS) key: the
// first half is the data key, the second the tweak key. The key is not retained; its
// expanded schedule is, until Close.
func New(key []byte) (*Cipher, error) {
	return newWith(key, defaultImplementation())
}

func newWith(key []byte, impl *implementation) (*Cipher, error) {
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("%w: got %d bytes", ErrKeySize, len(key))
	}
	c := &Cipher{impl: impl}
	half := len(key) / 2
	c.ks.rounds = expandKey(&c.ks.enc1, &c.ks.dec1, key[:half])
	expandKey(&c.ks.enc2, nil, key[half:])
	return c, nil
}

func defaultImplementation() *implementation {
	for _, im := range implementations {
		if im.available {
			return im
		}
	}
	panic("xts: no implementation available")
}

func (c *Cipher) check(dst, src []byte, sectorSize int) {
	if c.closed {
		panic("xts: use of a closed Cipher")
	}
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
// the number of the first sector in 512-byte units. dst and src may be the same slice
// but must not otherwise overlap. It panics if sectorSize is not 512, 1024, 2048 or
// 4096, if len(src) is not a multiple of sectorSize, if dst is shorter than src, or if
// the Cipher is closed. Sector numbers wrap around modulo 2^64.
func (c *Cipher) EncryptSectors(dst, src []byte, sectorSize int, sector uint64) {
	c.check(dst, src, sectorSize)
	if len(src) > 0 {
		c.impl.encrypt(&c.ks, dst[:len(src)], src, sectorSize, sector)
	}
}

// DecryptSectors is the inverse of EncryptSectors, with the same arguments and panics.
func (c *Cipher) DecryptSectors(dst, src []byte, sectorSize int, sector uint64) {
	c.check(dst, src, sectorSize)
	if len(src) > 0 {
		c.impl.decrypt(&c.ks, dst[:len(src)], src, sectorSize, sector)
	}
}

// parallelMin is the smallest share of a buffer worth a goroutine of its own.
const parallelMin = 64 << 10

// EncryptSectorsParallel is EncryptSectors spread over up to GOMAXPROCS goroutines,
// each taking a contiguous run of whole sectors. Buffers of less than 128 KiB are
// encrypted on the calling goroutine. It returns when all of dst is written.
func (c *Cipher) EncryptSectorsParallel(dst, src []byte, sectorSize int, sector uint64) {
	c.check(dst, src, sectorSize)
	c.parallel(c.impl.encrypt, dst, src, sectorSize, sector)
}

// DecryptSectorsParallel is DecryptSectors spread over up to GOMAXPROCS goroutines,
// like EncryptSectorsParallel.
func (c *Cipher) DecryptSectorsParallel(dst, src []byte, sectorSize int, sector uint64) {
	c.check(dst, src, sectorSize)
	c.parallel(c.impl.decrypt, dst, src, sectorSize, sector)
}

func (c *Cipher) parallel(f sectorFunc, dst, src []byte, sectorSize int, sector uint64) {
	sectors := len(src) / sectorSize
	workers := min(runtime.GOMAXPROCS(0), len(src)/parallelMin)
	if workers <= 1 {
		if len(src) > 0 {
			f(&c.ks, dst[:len(src)], src, sectorSize, sector)
		}
		return
	}
	var wg sync.WaitGroup
	start := 0
	for w := range workers {
		n := sectors / workers
		if w < sectors%workers {
			n++
		}
		lo, hi := start*sectorSize, (start+n)*sectorSize
		first := sector + uint64(start)*uint64(sectorSize/512)
		wg.Go(func() { f(&c.ks, dst[lo:hi], src[lo:hi], sectorSize, first) })
		start += n
	}
	wg.Wait()
}

// Close zeroes the expanded keys this Cipher holds. The Cipher must not be used
// afterwards, nor concurrently with Close; later calls to its methods panic.
func (c *Cipher) Close() {
	clear(c.ks.enc1[:])
	clear(c.ks.dec1[:])
	clear(c.ks.enc2[:])
	c.closed = true
}
