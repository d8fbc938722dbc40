package luks2

import (
	"context"
	"encoding"
	"encoding/binary"
	"hash"
)

// pbkdf2CheckEvery is how many PBKDF2 iterations run between two checks of the
// context: a few milliseconds of work.
const pbkdf2CheckEvery = 4096

// hmacPRF is HMAC (RFC 2104) over a hash whose state can be saved and restored
// (encoding.BinaryMarshaler, as crypto/sha1, sha256 and sha512 provide): the states
// after absorbing key^ipad and key^opad are computed once. Unlike crypto/hmac it
// keeps every key-derived byte in buffers it owns, so that wipe can clear them; the
// standard library's crypto/pbkdf2 takes the password as a string, which cannot be
// wiped, so it serves only as the test oracle.
type hmacPRF struct {
	inner, outer   hash.Hash
	ipad, opad     []byte // marshaled hash states after key^ipad, key^opad
	innerSum       []byte
	blockSize, out int
}

func newHMAC(h func() hash.Hash, key []byte) *hmacPRF {
	p := &hmacPRF{inner: h(), outer: h()}
	p.blockSize, p.out = p.inner.BlockSize(), p.inner.Size()
	k := make([]byte, p.blockSize)
	defer wipe(k)
	if len(key) > p.blockSize {
		p.inner.Write(key)
		p.inner.Sum(k[:0])
		p.inner.Reset()
	} else {
		copy(k, key)
	}
	for i := range k {
		k[i] ^= 0x36
	}
	p.inner.Write(k)
	for i := range k {
		k[i] ^= 0x36 ^ 0x5c
	}
	p.outer.Write(k)
	p.ipad, _ = p.inner.(encoding.BinaryMarshaler).MarshalBinary()
	p.opad, _ = p.outer.(encoding.BinaryMarshaler).MarshalBinary()
	p.innerSum = make([]byte, 0, p.out)
	return p
}

// sum sets dst to HMAC(key, msg...) and returns it.
func (p *hmacPRF) sum(dst []byte, msg ...[]byte) []byte {
	_ = p.inner.(encoding.BinaryUnmarshaler).UnmarshalBinary(p.ipad)
	for _, m := range msg {
		p.inner.Write(m)
	}
	p.innerSum = p.inner.Sum(p.innerSum[:0])
	_ = p.outer.(encoding.BinaryUnmarshaler).UnmarshalBinary(p.opad)
	p.outer.Write(p.innerSum)
	return p.outer.Sum(dst[:0])
}

// wipe clears the saved states and overwrites the hashes' internal buffers: a
// partial block of zeros followed by the rest of the block leaves the block buffer
// zero, and Reset the chaining value.
func (p *hmacPRF) wipe() {
	wipe(p.ipad)
	wipe(p.opad)
	wipe(p.innerSum[:cap(p.innerSum)])
	z := make([]byte, p.blockSize)
	for _, h := range []hash.Hash{p.inner, p.outer} {
		h.Reset()
		h.Write(z[:p.blockSize-1])
		h.Write(z[:1])
		h.Reset()
	}
}

// pbkdf2Ctx is PBKDF2 (RFC 8018 §5.2) with HMAC over h, taking the password as bytes
// that the caller can wipe. It checks ctx every pbkdf2CheckEvery iterations and
// returns ctx.Err() promptly, with no work left running, when ctx ends.
func pbkdf2Ctx(ctx context.Context, h func() hash.Hash, password, salt []byte, iter, keyLen int) ([]byte, error) {
	prf := newHMAC(h, password)
	defer prf.wipe()
	hLen := prf.out
	n := (keyLen + hLen - 1) / hLen
	out := make([]byte, n*hLen)
	u := make([]byte, 0, hLen)
	defer func() { wipe(u[:cap(u)]) }()
	var ctr [4]byte
	for block := 1; block <= n; block++ {
		t := out[(block-1)*hLen : block*hLen]
		binary.BigEndian.PutUint32(ctr[:], uint32(block))
		u = prf.sum(u, salt, ctr[:])
		copy(t, u)
		for i := 1; i < iter; i++ {
			if i%pbkdf2CheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					wipe(out)
					return nil, err
				}
			}
			u = prf.sum(u, u)
			for j := range t {
				t[j] ^= u[j]
			}
		}
	}
	wipe(out[keyLen:])
	return out[:keyLen:keyLen], nil
}

// pbkdf2Key is pbkdf2Ctx without a deadline, for costs we chose ourselves.
func pbkdf2Key(h func() hash.Hash, password, salt []byte, iter, keyLen int) []byte {
	k, _ := pbkdf2Ctx(context.Background(), h, password, salt, iter, keyLen)
	return k
}
