package xts

import "encoding/binary"

// generic is the portable implementation, used where no assembly applies.
var generic = &implementation{
	name:      "generic",
	available: true,
	encrypt:   encryptGeneric,
	decrypt:   decryptGeneric,
}

func encryptGeneric(ks *schedule, dst, src []byte, sectorSize int, sector uint64) {
	sectorsGeneric(ks, dst, src, sectorSize, sector, true)
}

func decryptGeneric(ks *schedule, dst, src []byte, sectorSize int, sector uint64) {
	sectorsGeneric(ks, dst, src, sectorSize, sector, false)
}

func sectorsGeneric(ks *schedule, dst, src []byte, sectorSize int, sector uint64, encrypt bool) {
	le := binary.LittleEndian
	for off := 0; off < len(src); off += sectorSize {
		var t [16]byte
		le.PutUint64(t[:], sector)
		encryptBlockGeneric(&ks.enc2, ks.rounds, &t)
		lo, hi := le.Uint64(t[0:]), le.Uint64(t[8:])
		var b [16]byte
		for i := off; i < off+sectorSize; i += 16 {
			le.PutUint64(b[0:], le.Uint64(src[i:])^lo)
			le.PutUint64(b[8:], le.Uint64(src[i+8:])^hi)
			if encrypt {
				encryptBlockGeneric(&ks.enc1, ks.rounds, &b)
			} else {
				decryptBlockGeneric(&ks.dec1, ks.rounds, &b)
			}
			le.PutUint64(dst[i:], le.Uint64(b[0:])^lo)
			le.PutUint64(dst[i+8:], le.Uint64(b[8:])^hi)
			// Multiply the tweak by x in GF(2^128), IEEE 1619-2007 section 5.2.
			carry := hi >> 63
			hi = hi<<1 | lo>>63
			lo = lo<<1 ^ 0x87*carry
		}
		clear(b[:])
		sector += uint64(sectorSize / 512)
	}
}
