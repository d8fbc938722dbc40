package luks2

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash"
)

// The anti-forensic splitter of the LUKS1 specification (§2.4 there, referenced by
// LUKS2 §3.5.3 as af type "luks1").

func hashFunc(name string) (func() hash.Hash, error) {
	nh, _ := csumHash(name)
	if nh == nil {
		return nil, fmt.Errorf("%w: hash %q", ErrUnsupported, name)
	}
	return nh, nil
}

// diffuse replaces buf with H(0||block0) H(1||block1) ..., the last block truncated.
func diffuse(buf []byte, h hash.Hash) {
	ds := h.Size()
	var iv [4]byte
	sum := make([]byte, 0, 64)
	for i := 0; i*ds < len(buf); i++ {
		end := min((i+1)*ds, len(buf))
		h.Reset()
		binary.BigEndian.PutUint32(iv[:], uint32(i))
		h.Write(iv[:])
		h.Write(buf[i*ds : end])
		sum = h.Sum(sum[:0])
		copy(buf[i*ds:end], sum)
	}
	wipe(sum[:cap(sum)])
}

func xorInto(dst, src []byte) {
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// afSplit splits key into stripes blocks (len(key)*stripes bytes).
func afSplit(key []byte, stripes int, hashName string) ([]byte, error) {
	nh, err := hashFunc(hashName)
	if err != nil {
		return nil, err
	}
	n := len(key)
	out := make([]byte, n*stripes)
	if _, err := rand.Read(out[:n*(stripes-1)]); err != nil {
		return nil, fmt.Errorf("luks2: random: %w", err)
	}
	buf := make([]byte, n)
	defer wipe(buf)
	h := nh()
	for i := 0; i < stripes-1; i++ {
		xorInto(buf, out[i*n:(i+1)*n])
		diffuse(buf, h)
	}
	last := out[(stripes-1)*n:]
	copy(last, buf)
	xorInto(last, key)
	return out, nil
}

// afMerge recovers a key of keySize bytes from split material.
func afMerge(split []byte, keySize, stripes int, hashName string) ([]byte, error) {
	nh, err := hashFunc(hashName)
	if err != nil {
		return nil, err
	}
	if len(split) < keySize*stripes {
		return nil, fmt.Errorf("%w: split key material too short", ErrInvalidMetadata)
	}
	buf := make([]byte, keySize)
	h := nh()
	for i := 0; i < stripes-1; i++ {
		xorInto(buf, split[i*keySize:(i+1)*keySize])
		diffuse(buf, h)
	}
	xorInto(buf, split[(stripes-1)*keySize:stripes*keySize])
	return buf, nil
}
