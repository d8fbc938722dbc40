// Command _asm generates xts_amd64.s, the amd64 assembly of package xts, with avo.
//
// Run it through `go generate` in xts/ or `make generate`. Instructions that avo
// v0.5.0 does not know in their VAES/VPCLMULQDQ EVEX forms (VAESENC on ZMM/YMM,
// VPCLMULQDQ on ZMM/YMM or X16-X31) are emitted with build.Instruction on physical
// registers; every register in this generator is physical, so no allocation happens.
package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/ir"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

const signature = "func(k1, k2 *byte, rounds int, dst, src *byte, length int, sectorSize int, sector uint64)"

func main() {
	ConstraintExpr("amd64,!purego")
	for _, enc := range []bool{true, false} {
		vaes(enc, 4)
		vaes(enc, 2)
		aesni(enc)
	}
	Generate()
}

var labels int

func label(prefix string) string {
	labels++
	return fmt.Sprintf("%s_%d", prefix, labels)
}

// raw appends an instruction avo cannot check. The last operand is the destination;
// all operands count as inputs.
func raw(op string, ops ...Op) {
	Instruction(&ir.Instruction{Opcode: op, Operands: ops, Inputs: ops, Outputs: ops[len(ops)-1:]})
}

// aesRounds emits the middle rounds 1..9, then rounds 10..13 only when the rounds
// register holds 14 (AES-256). round(r) emits round r for every block in flight.
func aesRounds(rounds Register, round func(r int)) {
	for r := 1; r <= 9; r++ {
		round(r)
	}
	done := label("rounds_done")
	CMPQ(rounds, Imm(10))
	JE(LabelRef(done))
	for r := 10; r <= 13; r++ {
		round(r)
	}
	Label(done)
}

var (
	zmm = []VecPhysical{Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15,
		Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31}
	ymm = []VecPhysical{Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15,
		Y16, Y17, Y18, Y19, Y20, Y21, Y22, Y23, Y24, Y25, Y26, Y27, Y28, Y29, Y30, Y31}
	xmm = []VecPhysical{X0, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11, X12, X13, X14, X15,
		X16, X17, X18, X19, X20, X21, X22, X23, X24, X25, X26, X27, X28, X29, X30, X31}
)

// mulXk sets dst = src * x^k in GF(2^128) modulo x^128+x^7+x^2+x+1, in every 128-bit
// lane, for 1 <= k <= 56. poly holds 0x87 in the low quadword of each lane.
// The quadwords are shifted left by k; the k bits leaving the low quadword enter the
// high one, and the k bits leaving the high quadword are reduced by a carry-less
// multiplication with 0x87 into the low one.
func mulXk(k int, src, dst, poly, a, b VecPhysical) {
	VPSRLQ(Imm(uint64(64-k)), src, a)        // a = [lo>>(64-k), hi>>(64-k)]
	raw("VPCLMULQDQ", Imm(0x01), poly, a, b) // b = clmul(hi>>(64-k), 0x87)
	VPSLLDQ(Imm(8), a, a)                    // a = [0, lo>>(64-k)]
	VPSLLQ(Imm(uint64(k)), src, dst)
	VPTERNLOGQ(Imm(0x96), a, b, dst)
}

// mulXbytes sets t = t * x^(8*n) in every lane, using one temporary.
func mulXbytes(n int, t, poly, a VecPhysical) {
	VPSRLDQ(Imm(uint64(16-n)), t, a) // the n top bytes of each lane, at its bottom
	raw("VPCLMULQDQ", Imm(0x00), poly, a, a)
	VPSLLDQ(Imm(uint64(n)), t, t)
	VPXORQ(a, t, t)
}

// vaes emits the VAES path with lanes blocks per vector register (4: ZMM, 2: YMM) and
// four vector registers of blocks in flight.
//
// Registers: V0-V3 tweaks, V4-V7 data, V8-V11 last round key ^ tweak, V12 a
// temporary, X13 the next sector's tweak, V16 round key 0, V17-V29 round keys 1-13,
// V30 the last round key, V31 the reduction constant.
func vaes(enc bool, lanes int) {
	var name, aesop, aeslast string
	regs := zmm
	bits := 512
	if lanes == 2 {
		regs = ymm
		bits = 256
	}
	if enc {
		name, aesop, aeslast = fmt.Sprintf("xtsEncVAES%d", bits), "VAESENC", "VAESENCLAST"
	} else {
		name, aesop, aeslast = fmt.Sprintf("xtsDecVAES%d", bits), "VAESDEC", "VAESDECLAST"
	}
	TEXT(name, NOSPLIT, signature)
	Pragma("noescape")
	Doc(fmt.Sprintf("%s %scrypts length bytes of whole sectors with VAES on %d-bit registers, %d blocks in flight.", name, map[bool]string{true: "en", false: "de"}[enc], bits, 4*lanes))
	k1, k2, rounds := RAX, RBX, RCX
	dst, src, length := RDI, RSI, RDX
	sectorSize, sector, step := R8, R9, R10
	inner, last1, last2 := R11, R12, R13
	Load(Param("k1"), k1)
	Load(Param("k2"), k2)
	Load(Param("rounds"), rounds)
	Load(Param("dst"), dst)
	Load(Param("src"), src)
	Load(Param("length"), length)
	Load(Param("sectorSize"), sectorSize)
	Load(Param("sector"), sector)
	MOVQ(sectorSize, step)
	SHRQ(Imm(9), step)
	MOVQ(rounds, last1)
	SHLQ(Imm(4), last1)
	MOVQ(last1, last2)
	ADDQ(k1, last1)
	ADDQ(k2, last2)

	// Round keys of the data key, broadcast to every lane. For AES-128 the registers
	// for rounds 10-13 get bytes of the schedule that are never used.
	for r := 0; r <= 13; r++ {
		VBROADCASTI32X4(Mem{Base: k1, Disp: 16 * r}, regs[16+r])
	}
	VBROADCASTI32X4(Mem{Base: last1}, regs[30])
	MOVQ(U32(0x87), inner)
	VPBROADCASTQ(inner, regs[31])

	tw := regs[0:4]
	data := regs[4:8]
	lastk := regs[8:12]
	tmp := regs[12]
	next := X13 // the tweak of the next sector, computed during this one

	// tweakRound emits round r of AES-Enc(k2, sector) on next; it is interleaved
	// with the data rounds of a sector's first iteration, so the serial latency of
	// the tweak encryption hides behind the data.
	tweakRound := func(r int) { VAESENC(Mem{Base: k2, Disp: 16 * r}, next, next) }
	tweakStart := func() {
		VMOVQ(sector, next)
		VPXOR(Mem{Base: k2}, next, next)
	}
	tweakLast := func() { VAESENCLAST(Mem{Base: last2}, next, next) }

	// iteration emits 4*lanes blocks: data ^= tweak, AES, data ^= tweak, with the
	// tweaks advanced by x^(4*lanes) on the way. extra, if not nil, runs after each
	// round's data instructions, and extraLast after the last round's.
	iteration := func(extra func(r int), extraLast func()) {
		for i := range 4 {
			VMOVDQU64(Mem{Base: src, Disp: 16 * lanes * i}, data[i])
		}
		for i := range 4 {
			VPTERNLOGQ(Imm(0x96), regs[16], tw[i], data[i]) // data ^= tweak ^ round key 0
			VPXORQ(regs[30], tw[i], lastk[i])
		}
		aesRounds(rounds, func(r int) {
			for i := range 4 {
				raw(aesop, regs[16+r], data[i], data[i])
			}
			if r == 1 {
				// Advance the tweaks by 4*lanes blocks while the AES units work.
				// One temporary suffices: the CPU renames it.
				for i := range 4 {
					mulXbytes(lanes/2, tw[i], regs[31], tmp)
				}
			}
			if extra != nil {
				extra(r)
			}
		})
		for i := range 4 {
			raw(aeslast, lastk[i], data[i], data[i]) // also xors the tweak back in
		}
		if extraLast != nil {
			extraLast()
		}
		for i := range 4 {
			VMOVDQU64(data[i], Mem{Base: dst, Disp: 16 * lanes * i})
		}
		ADDQ(U32(64*lanes), src)
		ADDQ(U32(64*lanes), dst)
		SUBQ(U32(64*lanes), inner)
	}

	// The first sector's tweak, alone.
	tweakStart()
	aesRounds(rounds, tweakRound)
	tweakLast()

	sectorLoop := label("sector")
	Label(sectorLoop)
	// Tweaks of the first 4*lanes blocks: lane j of tw[i] holds T*x^(lanes*i+j).
	// The data and lastk registers are free here; X31 holds 0x87 in both quadwords.
	VMOVDQU(next, X0)
	for j := 1; j < lanes; j++ {
		mulXk(j, next, xmm[8+j], X31, X4, X5)
	}
	for j := 1; j < lanes; j++ {
		VINSERTI32X4(Imm(uint64(j)), xmm[8+j], tw[0], tw[0])
	}
	for i := 1; i < 4; i++ {
		mulXk(lanes*i, tw[0], tw[i], regs[31], lastk[0], lastk[1])
	}

	// The first iteration also encrypts the next sector's tweak. Every sector has
	// at least two iterations (512 bytes), so the loop below runs at least once.
	ADDQ(step, sector)
	tweakStart()
	MOVQ(sectorSize, inner)
	iteration(tweakRound, tweakLast)
	blockLoop := label("blocks")
	Label(blockLoop)
	iteration(nil, nil)
	JNZ(LabelRef(blockLoop))

	SUBQ(sectorSize, length)
	JNZ(LabelRef(sectorLoop))
	// Leave no round keys, tweaks or data in vector registers: VZEROALL clears
	// V0-V15 entirely (and restores a clean upper state), V16-V31 need clearing
	// one by one.
	VZEROALL()
	for i := 16; i < 32; i++ {
		VPXORQ(zmm[i], zmm[i], zmm[i])
	}
	RET()
}

// aesni emits the AES-NI path: SSE only, 8 blocks in flight, round keys read from
// memory, the eight tweaks of an iteration kept on the stack.
//
// Registers: X0-X7 data, X8 round key, X9 running tweak, X10 temporary, X11 the mask
// {0x87, 1} for multiplying by x, X12 the next sector's tweak, X13 its round key.
func aesni(enc bool) {
	name, aesop, aeslast := "xtsEncAESNI", AESENC, AESENCLAST
	if !enc {
		name, aesop, aeslast = "xtsDecAESNI", AESDEC, AESDECLAST
	}
	TEXT(name, NOSPLIT, signature)
	Pragma("noescape")
	Doc(fmt.Sprintf("%s %scrypts length bytes of whole sectors with AES-NI, 8 blocks in flight.", name, map[bool]string{true: "en", false: "de"}[enc]))
	k1, k2, rounds := RAX, RBX, RCX
	dst, src, length := RDI, RSI, RDX
	sectorSize, sector, step := R8, R9, R10
	inner, last1, last2 := R11, R12, R13
	Load(Param("k1"), k1)
	Load(Param("k2"), k2)
	Load(Param("rounds"), rounds)
	Load(Param("dst"), dst)
	Load(Param("src"), src)
	Load(Param("length"), length)
	Load(Param("sectorSize"), sectorSize)
	Load(Param("sector"), sector)
	MOVQ(sectorSize, step)
	SHRQ(Imm(9), step)
	MOVQ(rounds, last1)
	SHLQ(Imm(4), last1)
	MOVQ(last1, last2)
	ADDQ(k1, last1)
	ADDQ(k2, last2)
	saved := AllocLocal(8 * 16)

	MOVQ(U32(0x87), inner)
	MOVQ(inner, X11)
	MOVQ(U32(1), inner)
	PINSRQ(Imm(1), inner, X11)

	key := X8
	tw := X9
	next, key2 := X12, X13 // the next sector's tweak and its round key

	tweakStart := func() {
		MOVQ(sector, next)
		MOVOU(Mem{Base: k2}, key2)
		PXOR(key2, next)
	}
	tweakRound := func(r int) {
		MOVOU(Mem{Base: k2, Disp: 16 * r}, key2)
		AESENC(key2, next)
	}
	tweakLast := func() {
		MOVOU(Mem{Base: last2}, key2)
		AESENCLAST(key2, next)
	}

	// iteration emits 8 blocks; extra and extraLast as in vaes.
	iteration := func(extra func(r int), extraLast func()) {
		for j := range 8 {
			MOVOU(tw, saved.Offset(16*j))
			MOVOU(Mem{Base: src, Disp: 16 * j}, xmm[j])
			PXOR(tw, xmm[j])
			// tw *= x: double both quadwords, then add the carry out of the low
			// quadword to the high one and reduce the carry out of the high one.
			MOVOU(tw, X10)
			PSRAL(Imm(31), X10)
			PSHUFD(Imm(0x13), X10, X10)
			PAND(X11, X10)
			PADDQ(tw, tw)
			PXOR(X10, tw)
		}
		MOVOU(Mem{Base: k1}, key)
		for j := range 8 {
			PXOR(key, xmm[j])
		}
		aesRounds(rounds, func(r int) {
			MOVOU(Mem{Base: k1, Disp: 16 * r}, key)
			for j := range 8 {
				aesop(key, xmm[j])
			}
			if extra != nil {
				extra(r)
			}
		})
		MOVOU(Mem{Base: last1}, key)
		for j := range 8 {
			aeslast(key, xmm[j])
		}
		if extraLast != nil {
			extraLast()
		}
		for j := range 8 {
			MOVOU(saved.Offset(16*j), key)
			PXOR(key, xmm[j])
			MOVOU(xmm[j], Mem{Base: dst, Disp: 16 * j})
		}
		ADDQ(Imm(128), src)
		ADDQ(Imm(128), dst)
		SUBQ(Imm(128), inner)
	}

	// The first sector's tweak, alone.
	tweakStart()
	aesRounds(rounds, tweakRound)
	tweakLast()

	sectorLoop := label("sector")
	Label(sectorLoop)
	MOVOU(next, tw)
	// The first iteration also encrypts the next sector's tweak; every sector has
	// at least four iterations, so the loop below runs at least once.
	ADDQ(step, sector)
	tweakStart()
	MOVQ(sectorSize, inner)
	iteration(tweakRound, tweakLast)
	blockLoop := label("blocks")
	Label(blockLoop)
	iteration(nil, nil)
	JNZ(LabelRef(blockLoop))

	SUBQ(sectorSize, length)
	JNZ(LabelRef(sectorLoop))
	// Leave no round key, tweak or data behind in registers or on the stack.
	for j := range 16 {
		PXOR(xmm[j], xmm[j])
	}
	for j := range 8 {
		MOVOU(X0, saved.Offset(16*j))
	}
	RET()
}
