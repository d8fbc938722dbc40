package xts

import "encoding/binary"

// This file holds the AES key schedule (FIPS-197 section 5.2) the assembly uses. Round
// keys live in arrays owned by the Cipher so that Close can zero them; crypto/aes
// keeps its schedule out of reach. The generic implementation uses crypto/aes.

// maxRounds is the number of rounds of AES-256.
const maxRounds = 14

// roundKeys holds up to 15 round keys, each as the 16 bytes that AESENC expects: the
// FIPS-197 words w[4r..4r+3], each big-endian.
type roundKeys [16 * (maxRounds + 1)]byte

var (
	sbox, invSbox  [256]byte
	td             [4][256]uint32
	tablesComputed = computeTables()
)

// gmul multiplies in GF(2^8) modulo x^8+x^4+x^3+x+1.
func gmul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		hi := a & 0x80
		a <<= 1
		if hi != 0 {
			a ^= 0x1b
		}
		b >>= 1
	}
	return p
}

func rotl8(x byte, n uint) byte { return x<<n | x>>(8-n) }

func computeTables() bool {
	// Walk the multiplicative group with generator 3: p runs over 3^i and q over
	// 3^-i, so q is the inverse of p; the S-box is the affine map of the inverse.
	p, q := byte(1), byte(1)
	for {
		p = p ^ p<<1 ^ byte(int8(p)>>7)&0x1b
		q ^= q << 1
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		sbox[p] = q ^ rotl8(q, 1) ^ rotl8(q, 2) ^ rotl8(q, 3) ^ rotl8(q, 4) ^ 0x63
		if p == 1 {
			break
		}
	}
	sbox[0] = 0x63
	for i := range 256 {
		invSbox[sbox[i]] = byte(i)
	}
	for i := range 256 {
		si := invSbox[i]
		v := uint32(gmul(si, 14))<<24 | uint32(gmul(si, 9))<<16 | uint32(gmul(si, 13))<<8 | uint32(gmul(si, 11))
		for j := range 4 {
			td[j][i] = v
			v = v>>8 | v<<24
		}
	}
	return true
}

func subWord(w uint32) uint32 {
	return uint32(sbox[w>>24])<<24 | uint32(sbox[w>>16&0xff])<<16 | uint32(sbox[w>>8&0xff])<<8 | uint32(sbox[w&0xff])
}

// invMixColumn applies InvMixColumns to one column, for the decryption schedule of the
// equivalent inverse cipher (FIPS-197 section 5.3.5).
func invMixColumn(w uint32) uint32 {
	return td[0][sbox[w>>24]] ^ td[1][sbox[w>>16&0xff]] ^ td[2][sbox[w>>8&0xff]] ^ td[3][sbox[w&0xff]]
}

// expandKey fills enc with the encryption round keys of a 16- or 32-byte AES key and
// dec (if not nil) with the decryption round keys in the order AESDEC uses them:
// dec[0] = enc[nr], dec[r] = InvMixColumns(enc[nr-r]), dec[nr] = enc[0].
// It returns the number of rounds.
func expandKey(enc, dec *roundKeys, key []byte) int {
	nk := len(key) / 4
	nr := nk + 6
	var w [4 * (maxRounds + 1)]uint32
	for i := range nk {
		w[i] = binary.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := nk; i < 4*(nr+1); i++ {
		t := w[i-1]
		if i%nk == 0 {
			t = subWord(t<<8|t>>24) ^ rcon<<24
			rcon = uint32(gmul(byte(rcon), 2))
		} else if nk > 6 && i%nk == 4 {
			t = subWord(t)
		}
		w[i] = w[i-nk] ^ t
	}
	for i := range 4 * (nr + 1) {
		binary.BigEndian.PutUint32(enc[4*i:], w[i])
	}
	if dec != nil {
		for r := 0; r <= nr; r++ {
			for j := range 4 {
				x := w[4*(nr-r)+j]
				if r > 0 && r < nr {
					x = invMixColumn(x)
				}
				binary.BigEndian.PutUint32(dec[16*r+4*j:], x)
			}
		}
	}
	clear(w[:])
	return nr
}
