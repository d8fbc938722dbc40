package xts

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
)

// generic is the portable implementation, used where no assembly of ours applies
// (other architectures, the purego build tag, amd64 CPUs without AES-NI). Its block
// cipher is the standard library's crypto/aes, which uses the platform's AES
// instructions where it has them (AES-NI on amd64, the ARMv8 Cryptography Extensions
// on arm64, CPACF on s390x, POWER8 on ppc64x) and is then constant-time.
var generic = &implementation{
	name:      "generic",
	available: true,
	encrypt:   encryptGeneric,
	decrypt:   decryptGeneric,
}

// genericBlocks returns the crypto/aes ciphers of the data key and the tweak key.
// crypto/aes keeps its expanded key out of our reach: it cannot be wiped, only
// dropped (Close), and is collected with the Block.
func genericBlocks(key []byte) (data, tweak cipher.Block, err error) {
	half := len(key) / 2
	if data, err = aes.NewCipher(key[:half]); err != nil {
		return nil, nil, err
	}
	if tweak, err = aes.NewCipher(key[half:]); err != nil {
		return nil, nil, err
	}
	return data, tweak, nil
}

func encryptGeneric(ks *schedule, dst, src []byte, sectorSize int, sector uint64) {
	sectorsGeneric(ks, dst, src, sectorSize, sector, true)
}

func decryptGeneric(ks *schedule, dst, src []byte, sectorSize int, sector uint64) {
	sectorsGeneric(ks, dst, src, sectorSize, sector, false)
}

func sectorsGeneric(ks *schedule, dst, src []byte, sectorSize int, sector uint64, encrypt bool) {
	le := binary.LittleEndian
	var t, b [16]byte
	for off := 0; off < len(src); off += sectorSize {
		clear(t[:])
		le.PutUint64(t[:], sector)
		ks.tweak.Encrypt(t[:], t[:])
		lo, hi := le.Uint64(t[0:]), le.Uint64(t[8:])
		for i := off; i < off+sectorSize; i += 16 {
			le.PutUint64(b[0:], le.Uint64(src[i:])^lo)
			le.PutUint64(b[8:], le.Uint64(src[i+8:])^hi)
			if encrypt {
				ks.data.Encrypt(b[:], b[:])
			} else {
				ks.data.Decrypt(b[:], b[:])
			}
			le.PutUint64(dst[i:], le.Uint64(b[0:])^lo)
			le.PutUint64(dst[i+8:], le.Uint64(b[8:])^hi)
			// Multiply the tweak by x in GF(2^128), IEEE 1619-2007 section 5.2.
			carry := hi >> 63
			hi = hi<<1 | lo>>63
			lo = lo<<1 ^ 0x87*carry
		}
		sector += uint64(sectorSize / 512)
	}
	clear(b[:])
	clear(t[:])
}
