// Package probe recognises what a block device or image already carries (LUKS1 and
// LUKS2 headers, ext2/3/4, xfs, btrfs, vfat, swap, GPT and DOS partition tables) from
// an io.ReaderAt, as blkid's low-level probe does, so that nothing is overwritten by
// mistake. It is pure Go with no operating-system imports: portable packages (luks2)
// use it on any GOOS.
//
// It is also the one home of the LUKS on-disk constants both it and package luks2
// need: the magics, the offsets a LUKS2 secondary header may start at, and the
// offsets of the binary header fields (LUKS2 On-Disk Format Specification §2,
// Table 1; LUKS1 shares the magic, version, and UUID offsets).
package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Signature usage classes, as blkid names them.
const (
	UsageCrypto     = "crypto"
	UsageFilesystem = "filesystem"
	UsageSwap       = "swap"
	UsagePartTable  = "partition table"
)

// Signature describes a known on-disk structure found by Probe.
type Signature struct {
	// Type names the structure as blkid does: "luks2", "luks1", "ext2",
	// "ext3", "ext4", "jbd", "xfs", "btrfs", "vfat", "swap", "swsuspend",
	// "gpt" or "dos".
	Type string
	// Usage is one of the Usage* constants.
	Usage string
	// Offset is the byte offset of the magic that identified the structure.
	Offset int64
	// UUID is the structure's identifier where it has one (may be empty).
	UUID string
	// Label is the structure's label where it has one (may be empty).
	Label string
}

// String describes the signature for operators, e.g. `ext4 filesystem
// (UUID 1234…) at offset 1080`.
func (s *Signature) String() string {
	if s == nil {
		return "no signature"
	}
	var b strings.Builder
	b.WriteString(s.Type)
	if s.Usage != "" {
		b.WriteString(" " + s.Usage)
	}
	if s.Label != "" {
		fmt.Fprintf(&b, " %q", s.Label)
	}
	if s.UUID != "" {
		fmt.Fprintf(&b, " (UUID %s)", s.UUID)
	}
	fmt.Fprintf(&b, " at offset %d", s.Offset)
	return b.String()
}

// ErrSignature is matched (errors.Is) by every *SignatureError: the device
// carries data that an operation would destroy.
var ErrSignature = errors.New("device carries a signature")

// SignatureError reports a signature found where none was expected.
type SignatureError struct {
	// Sig is the signature found.
	Sig *Signature
}

// Error implements error.
func (e *SignatureError) Error() string {
	return fmt.Sprintf("device carries a %s; wipe it or use --force", e.Sig)
}

// Is reports whether target is ErrSignature.
func (e *SignatureError) Is(target error) bool { return target == ErrSignature }

// CheckEmpty returns nil when Probe finds nothing on r, a *SignatureError
// (matching ErrSignature) when it finds something, or the I/O error.
func CheckEmpty(r io.ReaderAt, size int64) error {
	sig, err := Probe(r, size)
	if err != nil {
		return err
	}
	if sig != nil {
		return &SignatureError{Sig: sig}
	}
	return nil
}

// Probe looks for a known signature on the first size bytes of r: LUKS1 and
// LUKS2 (primary header, or a LUKS2 secondary header at 16 KiB .. 4 MiB),
// ext2/3/4 and ext journal devices, xfs, btrfs, vfat (FAT12/16/32), swap
// (and hibernation images), GPT (primary at LBA 1 for 512- and 4096-byte
// sectors, or a backup at the last LBA) and DOS (MBR) partition tables.
// It returns (nil, nil) when nothing known is found. A negative size means
// unknown: reads past the end then count as absence. When several
// signatures are present the first by the order above is returned; see
// ProbeAll for all of them.
func Probe(r io.ReaderAt, size int64) (*Signature, error) {
	sigs, err := probe(r, size, true)
	if err != nil || len(sigs) == 0 {
		return nil, err
	}
	return sigs[0], nil
}

// ProbeAll is like Probe but returns every signature found, in Probe's order.
func ProbeAll(r io.ReaderAt, size int64) ([]*Signature, error) {
	return probe(r, size, false)
}

type prober struct {
	r    io.ReaderAt
	size int64
	err  error
}

// read returns n bytes at off, or nil when they lie beyond the device or an
// error occurred (recorded in p.err).
func (p *prober) read(off int64, n int) []byte {
	if p.err != nil || off < 0 {
		return nil
	}
	if p.size >= 0 && (off > p.size || int64(n) > p.size-off) {
		return nil
	}
	buf := make([]byte, n)
	m, err := p.r.ReadAt(buf, off)
	if m == n {
		return buf
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if p.size < 0 {
			return nil
		}
		err = io.ErrUnexpectedEOF
	}
	p.err = fmt.Errorf("probe: read %d bytes at %d: %w", n, off, err)
	return nil
}

type probeFunc func(p *prober) *Signature

var probes = []probeFunc{
	probeLUKS,
	probeXFS,
	probeBtrfs,
	probeExt,
	probeVFAT,
	probeSwap,
	probeGPT,
	probeDOS,
	probeLUKSSecondary,
}

func probe(r io.ReaderAt, size int64, first bool) ([]*Signature, error) {
	p := &prober{r: r, size: size}
	var sigs []*Signature
	for _, f := range probes {
		s := f(p)
		if p.err != nil {
			return nil, p.err
		}
		if s != nil {
			sigs = append(sigs, s)
			if first {
				break
			}
		}
	}
	return sigs, nil
}

// cstring returns b up to its first NUL, with trailing spaces trimmed.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}

func formatUUID(b []byte) string {
	if bytes.Equal(b, make([]byte, len(b))) {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// formatGUID formats a mixed-endian EFI GUID.
func formatGUID(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

// LUKS on-disk constants (LUKS2 On-Disk Format Specification §2, Table 1). Offsets
// are into the binary header; integers are big-endian.
const (
	// LUKSMagic starts a LUKS1 header and a LUKS2 primary header.
	LUKSMagic = "LUKS\xba\xbe"
	// LUKS2SecondaryMagic starts a LUKS2 secondary header.
	LUKS2SecondaryMagic = "SKUL\xba\xbe"
	// LUKSOffVersion is the offset of the 16-bit version (1 or 2).
	LUKSOffVersion = 6
	// LUKS2OffHdrSize is the offset of the 64-bit header size.
	LUKS2OffHdrSize = 8
	// LUKS2OffSeqid is the offset of the 64-bit sequence id.
	LUKS2OffSeqid = 16
	// LUKS2OffLabel is the offset of the NUL-terminated label.
	LUKS2OffLabel = 24
	// LUKS2LenLabel is the label field's size.
	LUKS2LenLabel = 48
	// LUKS2OffCsumAlg is the offset of the checksum algorithm name.
	LUKS2OffCsumAlg = 72
	// LUKS2LenCsumAlg is the checksum algorithm field's size.
	LUKS2LenCsumAlg = 32
	// LUKS2OffSalt is the offset of the per-copy salt.
	LUKS2OffSalt = 104
	// LUKS2LenSalt is the salt's size.
	LUKS2LenSalt = 64
	// LUKSOffUUID is the offset of the NUL-terminated UUID (the same in LUKS1).
	LUKSOffUUID = 168
	// LUKSLenUUID is the UUID field's size.
	LUKSLenUUID = 40
	// LUKS2OffSubsystem is the offset of the NUL-terminated subsystem.
	LUKS2OffSubsystem = 208
	// LUKS2LenSubsystem is the subsystem field's size.
	LUKS2LenSubsystem = 48
	// LUKS2OffHdrOffset is the 64-bit offset of this copy on the device.
	LUKS2OffHdrOffset = 256
	// LUKS2OffCsum is the offset of the header checksum.
	LUKS2OffCsum = 448
	// LUKS2LenCsum is the checksum field's size.
	LUKS2LenCsum = 64
	// LUKS2BinHeaderSize is the size of the binary header before the JSON area.
	LUKS2BinHeaderSize = 4096
)

// LUKS2HeaderSizes returns the sizes a LUKS2 header copy (binary header and JSON
// area) may have, 16 KiB to 4 MiB: also the offsets where the secondary copy may
// start (§2, §3.2). The slice is the caller's.
func LUKS2HeaderSizes() []int64 {
	return []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}
}

func luksSig(b []byte, off int64, typ string) *Signature {
	s := &Signature{Type: typ, Usage: UsageCrypto, Offset: off, UUID: cstring(b[LUKSOffUUID : LUKSOffUUID+LUKSLenUUID])}
	if typ == "luks2" {
		s.Label = cstring(b[LUKS2OffLabel : LUKS2OffLabel+LUKS2LenLabel])
	}
	return s
}

func probeLUKS(p *prober) *Signature {
	b := p.read(0, 512)
	if b == nil || string(b[:len(LUKSMagic)]) != LUKSMagic {
		return nil
	}
	switch binary.BigEndian.Uint16(b[LUKSOffVersion:]) {
	case 1:
		return luksSig(b, 0, "luks1")
	case 2:
		return luksSig(b, 0, "luks2")
	}
	return nil
}

func probeLUKSSecondary(p *prober) *Signature {
	for _, off := range LUKS2HeaderSizes() {
		b := p.read(off, 512)
		if b == nil {
			return nil
		}
		if string(b[:len(LUKS2SecondaryMagic)]) == LUKS2SecondaryMagic && binary.BigEndian.Uint16(b[LUKSOffVersion:]) == 2 {
			// The binary header records its own offset (hdr_offset).
			if binary.BigEndian.Uint64(b[LUKS2OffHdrOffset:]) == uint64(off) {
				return luksSig(b, off, "luks2")
			}
		}
	}
	return nil
}

func probeXFS(p *prober) *Signature {
	b := p.read(0, 512)
	if b == nil || string(b[:4]) != "XFSB" {
		return nil
	}
	// sb_blocksize (offset 4) is a power of two between 512 and 64 KiB.
	bs := binary.BigEndian.Uint32(b[4:8])
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return nil
	}
	return &Signature{Type: "xfs", Usage: UsageFilesystem, Offset: 0,
		UUID: formatUUID(b[32:48]), Label: cstring(b[108:120])}
}

func probeBtrfs(p *prober) *Signature {
	const sb = 0x10000
	b := p.read(sb, 4096)
	if b == nil || string(b[64:72]) != "_BHRfS_M" {
		return nil
	}
	return &Signature{Type: "btrfs", Usage: UsageFilesystem, Offset: sb + 64,
		UUID: formatUUID(b[32:48]), Label: cstring(b[299 : 299+256])}
}

// ext2/3/4 feature bits (see the kernel's fs/ext4/ext4.h).
const (
	extCompatHasJournal     = 0x0004
	extIncompatJournalDev   = 0x0008
	ext3IncompatSupported   = 0x0002 | 0x0004 | 0x0010 // FILETYPE, RECOVER, META_BG
	ext2IncompatSupported   = 0x0002 | 0x0010          // FILETYPE, META_BG
	ext3ROCompatSupported   = 0x0001 | 0x0002 | 0x0004 // SPARSE_SUPER, LARGE_FILE, BTREE_DIR
	extIncompatUnsupported2 = ^uint32(ext2IncompatSupported)
)

func probeExt(p *prober) *Signature {
	const sbOff = 1024
	b := p.read(sbOff, 1024)
	if b == nil || binary.LittleEndian.Uint16(b[56:58]) != 0xEF53 {
		return nil
	}
	// Sanity: s_log_block_size (24) gives 1 KiB .. 64 KiB blocks and
	// s_rev_level (76) is 0 or 1.
	if binary.LittleEndian.Uint32(b[24:28]) > 6 || binary.LittleEndian.Uint32(b[76:80]) > 1 {
		return nil
	}
	compat := binary.LittleEndian.Uint32(b[0x5C:0x60])
	incompat := binary.LittleEndian.Uint32(b[0x60:0x64])
	roCompat := binary.LittleEndian.Uint32(b[0x64:0x68])
	s := &Signature{Usage: UsageFilesystem, Offset: sbOff + 56,
		UUID: formatUUID(b[0x68:0x78]), Label: cstring(b[0x78:0x88])}
	switch {
	case incompat&extIncompatJournalDev != 0:
		s.Type = "jbd"
	case incompat&^ext3IncompatSupported != 0 || roCompat&^ext3ROCompatSupported != 0:
		s.Type = "ext4"
	case compat&extCompatHasJournal != 0:
		s.Type = "ext3"
	case incompat&extIncompatUnsupported2 != 0:
		// RECOVER without a journal: not a plain ext2.
		s.Type = "ext4"
	default:
		s.Type = "ext2"
	}
	return s
}

func isPow2(v uint32) bool { return v != 0 && v&(v-1) == 0 }

func probeVFAT(p *prober) *Signature {
	b := p.read(0, 512)
	if b == nil || b[510] != 0x55 || b[511] != 0xAA {
		return nil
	}
	var serial, label []byte
	switch {
	case string(b[82:90]) == "FAT32   ":
		serial, label = b[67:71], b[71:82]
	case string(b[54:62]) == "FAT12   " || string(b[54:62]) == "FAT16   ":
		serial, label = b[39:43], b[43:54]
	default:
		return nil
	}
	// BIOS parameter block sanity: sector size, cluster size, reserved
	// sectors and number of FATs.
	ssz := uint32(binary.LittleEndian.Uint16(b[11:13]))
	if ssz < 512 || ssz > 4096 || !isPow2(ssz) || !isPow2(uint32(b[13])) ||
		binary.LittleEndian.Uint16(b[14:16]) == 0 || b[16] == 0 || b[16] > 4 {
		return nil
	}
	lbl := cstring(label)
	if lbl == "NO NAME" {
		lbl = ""
	}
	return &Signature{Type: "vfat", Usage: UsageFilesystem, Offset: 0,
		UUID:  fmt.Sprintf("%04X-%04X", binary.LittleEndian.Uint16(serial[2:4]), binary.LittleEndian.Uint16(serial[0:2])),
		Label: lbl}
}

// swapPageSizes are the page sizes whose swap signatures are recognised.
var swapPageSizes = []int64{4096, 8192, 16384, 65536}

func probeSwap(p *prober) *Signature {
	for _, ps := range swapPageSizes {
		b := p.read(ps-10, 10)
		if b == nil {
			return nil
		}
		switch string(b) {
		case "SWAPSPACE2", "SWAP-SPACE":
			s := &Signature{Type: "swap", Usage: UsageSwap, Offset: ps - 10}
			if string(b) == "SWAPSPACE2" {
				if h := p.read(1024, 44); h != nil {
					s.UUID = formatUUID(h[12:28])
					s.Label = cstring(h[28:44])
				}
			}
			return s
		}
		// Hibernation images replace the swap signature.
		switch {
		case string(b[:9]) == "S1SUSPEND", string(b[:9]) == "S2SUSPEND",
			string(b[:9]) == "ULSUSPEND", string(b) == "LINHIB0001":
			return &Signature{Type: "swsuspend", Usage: UsageSwap, Offset: ps - 10}
		}
	}
	return nil
}

func probeGPT(p *prober) *Signature {
	check := func(off int64) *Signature {
		b := p.read(off, 92)
		if b == nil || string(b[:8]) != "EFI PART" {
			return nil
		}
		// header size (12) is at least 92 bytes and at most one sector.
		if hs := binary.LittleEndian.Uint32(b[12:16]); hs < 92 || hs > 4096 {
			return nil
		}
		return &Signature{Type: "gpt", Usage: UsagePartTable, Offset: off, UUID: formatGUID(b[56:72])}
	}
	for _, ss := range []int64{512, 4096} {
		if s := check(ss); s != nil || p.err != nil {
			return s
		}
	}
	// Backup header at the last LBA (primary damaged or wiped).
	if p.size > 0 {
		for _, ss := range []int64{512, 4096} {
			if p.size%ss == 0 && p.size >= 3*ss {
				if s := check(p.size - ss); s != nil || p.err != nil {
					return s
				}
			}
		}
	}
	return nil
}

func probeDOS(p *prober) *Signature {
	b := p.read(0, 512)
	if b == nil || b[510] != 0x55 || b[511] != 0xAA {
		return nil
	}
	used := 0
	for i := 0; i < 4; i++ {
		e := b[446+16*i : 446+16*(i+1)]
		if e[0] != 0 && e[0] != 0x80 {
			return nil
		}
		if e[4] != 0 {
			used++
		}
	}
	if used == 0 {
		return nil
	}
	s := &Signature{Type: "dos", Usage: UsagePartTable, Offset: 510}
	if id := binary.LittleEndian.Uint32(b[440:444]); id != 0 {
		s.UUID = fmt.Sprintf("%08x", id)
	}
	return s
}
