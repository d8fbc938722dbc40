//go:build amd64 && !purego

package xts

import "golang.org/x/sys/cpu"

// The CPU features each assembly path needs, read once.
var (
	hasVAES = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL &&
		cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasAES
	hasAESNI = cpu.X86.HasAES && cpu.X86.HasSSE41
)

// implementations lists the ways this build can compute XTS, fastest first. New uses
// the first available one; the tests run every available one.
var implementations = []*implementation{
	{name: "VAES512", available: hasVAES, encrypt: asm(xtsEncVAES512, false), decrypt: asm(xtsDecVAES512, true)},
	{name: "VAES256", available: hasVAES, encrypt: asm(xtsEncVAES256, false), decrypt: asm(xtsDecVAES256, true)},
	{name: "AESNI", available: hasAESNI, encrypt: asm(xtsEncAESNI, false), decrypt: asm(xtsDecAESNI, true)},
	generic,
}

// asmFunc is the signature of every function in xts_amd64.s: length bytes of whole
// sectors of sectorSize bytes, length > 0, with k1 the data key's round keys in the
// order of the direction and k2 the tweak key's encryption round keys.
type asmFunc func(k1, k2 *byte, rounds int, dst, src *byte, length int, sectorSize int, sector uint64)

func asm(f asmFunc, decrypt bool) sectorFunc {
	return func(ks *schedule, dst, src []byte, sectorSize int, sector uint64) {
		k1 := &ks.enc1[0]
		if decrypt {
			k1 = &ks.dec1[0]
		}
		f(k1, &ks.enc2[0], ks.rounds, &dst[0], &src[0], len(src), sectorSize, sector)
	}
}
