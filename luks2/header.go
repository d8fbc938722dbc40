package luks2

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/diskcryptd/diskcryptd/blockdev/probe"
)

// Binary header layout (spec §2, Table 1), from its one home in package probe. All
// integers are big-endian.
const (
	binHeaderSize = probe.LUKS2BinHeaderSize
	offMagic      = 0
	offVersion    = probe.LUKSOffVersion
	offHdrSize    = probe.LUKS2OffHdrSize
	offSeqid      = probe.LUKS2OffSeqid
	offLabel      = probe.LUKS2OffLabel
	offCsumAlg    = probe.LUKS2OffCsumAlg
	offSalt       = probe.LUKS2OffSalt
	offUUID       = probe.LUKSOffUUID
	offSubsystem  = probe.LUKS2OffSubsystem
	offHdrOffset  = probe.LUKS2OffHdrOffset
	offCsum       = probe.LUKS2OffCsum
	lenLabel      = probe.LUKS2LenLabel
	lenCsumAlg    = probe.LUKS2LenCsumAlg
	lenSalt       = probe.LUKS2LenSalt
	lenUUID       = probe.LUKSLenUUID
	lenSubsystem  = probe.LUKS2LenSubsystem
	lenCsum       = probe.LUKS2LenCsum

	// DefaultHeaderSize is the size of one header copy (binary header + JSON area)
	// that Format writes: 16 KiB, i.e. 12 KiB of JSON.
	DefaultHeaderSize = 16 << 10
	maxHeaderSize     = 4 << 20
)

var (
	magicPrimary   = []byte(probe.LUKSMagic)
	magicSecondary = []byte(probe.LUKS2SecondaryMagic)
	// secondaryOffsets are the possible header sizes, i.e. the offsets where a
	// secondary header may start (§2, §3.2).
	secondaryOffsets = probe.LUKS2HeaderSizes()
)

func validHeaderSize(n uint64) bool {
	for _, o := range secondaryOffsets {
		if uint64(o) == n {
			return true
		}
	}
	return false
}

// binHeader holds the fields of one binary header.
type binHeader struct {
	secondary bool
	hdrSize   int64
	seqid     uint64
	label     string
	csumAlg   string
	salt      [lenSalt]byte
	uuid      string
	subsystem string
	hdrOffset int64
}

// headerCopy is one parsed and verified header copy.
type headerCopy struct {
	bin  binHeader
	json []byte // the JSON text, without the trailing NULs
	meta *metadata
}

func csumHash(alg string) (func() hash.Hash, int) {
	switch alg {
	case "sha256":
		return sha256.New, sha256.Size
	case "sha512":
		return sha512.New, sha512.Size
	case "sha1":
		return sha1.New, sha1.Size
	}
	return nil, 0
}

// cString returns the NUL-terminated string in b; it fails when b has no NUL.
func cString(b []byte, field string) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", fmt.Errorf("%w: %s is not NUL-terminated", ErrInvalidMetadata, field)
	}
	return string(b[:i]), nil
}

func putCString(dst []byte, s string, field string) error {
	if len(s) >= len(dst) {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrUnsupported, field, len(dst)-1)
	}
	if bytes.IndexByte([]byte(s), 0) >= 0 {
		return fmt.Errorf("%w: %s contains NUL", ErrUnsupported, field)
	}
	copy(dst, s)
	return nil
}

// parseBinHeader checks the fixed part of a header copy read at off. It returns
// ErrLUKS1 for a LUKS1 header and ErrNotLUKS when there is no LUKS magic at all.
func parseBinHeader(b []byte, off int64) (*binHeader, error) {
	var h binHeader
	switch {
	case bytes.Equal(b[offMagic:offMagic+6], magicPrimary):
	case bytes.Equal(b[offMagic:offMagic+6], magicSecondary):
		h.secondary = true
	default:
		return nil, ErrNotLUKS
	}
	v := binary.BigEndian.Uint16(b[offVersion:])
	if v == 1 && !h.secondary {
		return nil, ErrLUKS1
	}
	if v != 2 {
		return nil, fmt.Errorf("%w: header version %d", ErrInvalidMetadata, v)
	}
	hs := binary.BigEndian.Uint64(b[offHdrSize:])
	if !validHeaderSize(hs) {
		return nil, fmt.Errorf("%w: header size %d", ErrInvalidMetadata, hs)
	}
	h.hdrSize = int64(hs)
	h.seqid = binary.BigEndian.Uint64(b[offSeqid:])
	ho := binary.BigEndian.Uint64(b[offHdrOffset:])
	if ho != uint64(off) {
		return nil, fmt.Errorf("%w: header offset field %d but found at %d", ErrInvalidMetadata, ho, off)
	}
	if h.secondary != (off != 0) {
		return nil, fmt.Errorf("%w: %s magic at offset %d", ErrInvalidMetadata, map[bool]string{true: "secondary", false: "primary"}[h.secondary], off)
	}
	if h.secondary && off != h.hdrSize {
		return nil, fmt.Errorf("%w: secondary header at %d but header size %d", ErrInvalidMetadata, off, h.hdrSize)
	}
	h.hdrOffset = off
	var err error
	if h.label, err = cString(b[offLabel:offLabel+lenLabel], "label"); err != nil {
		return nil, err
	}
	if h.csumAlg, err = cString(b[offCsumAlg:offCsumAlg+lenCsumAlg], "checksum_alg"); err != nil {
		return nil, err
	}
	if nh, _ := csumHash(h.csumAlg); nh == nil {
		return nil, fmt.Errorf("%w: checksum algorithm %q", ErrInvalidMetadata, h.csumAlg)
	}
	copy(h.salt[:], b[offSalt:offSalt+lenSalt])
	if h.uuid, err = cString(b[offUUID:offUUID+lenUUID], "uuid"); err != nil {
		return nil, err
	}
	if h.subsystem, err = cString(b[offSubsystem:offSubsystem+lenSubsystem], "subsystem"); err != nil {
		return nil, err
	}
	return &h, nil
}

// checksum computes the header checksum over hdr (hdrSize bytes) with the checksum
// field treated as zero.
func checksum(alg string, hdr []byte) []byte {
	nh, _ := csumHash(alg)
	h := nh()
	h.Write(hdr[:offCsum])
	h.Write(make([]byte, lenCsum))
	h.Write(hdr[offCsum+lenCsum:])
	return h.Sum(nil)
}

// readCopy reads and verifies the header copy at off: binary header, checksum and
// JSON metadata. sound reports that the binary header and its checksum were valid,
// whatever became of the JSON: cryptsetup then trusts its header size.
func readCopy(dev io.ReaderAt, off int64) (c *headerCopy, sound *binHeader, err error) {
	b := make([]byte, binHeaderSize)
	if err := readFull(dev, b, off); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, ErrNotLUKS
		}
		return nil, nil, fmt.Errorf("luks2: reading header at %d: %w", off, err)
	}
	bh, err := parseBinHeader(b, off)
	if err != nil {
		return nil, nil, err
	}
	full := make([]byte, bh.hdrSize)
	copy(full, b)
	if err := readFull(dev, full[binHeaderSize:], off+binHeaderSize); err != nil {
		return nil, nil, fmt.Errorf("%w: reading JSON area at %d: %v", ErrInvalidMetadata, off, err)
	}
	if err := verifyChecksum(full, bh); err != nil {
		return nil, nil, err
	}
	c, err = parseCopy(full, bh)
	return c, bh, err
}

func verifyChecksum(full []byte, bh *binHeader) error {
	sum := checksum(bh.csumAlg, full)
	stored := full[offCsum : offCsum+lenCsum]
	if !bytes.Equal(stored[:len(sum)], sum) {
		return fmt.Errorf("%w: header checksum mismatch at offset %d", ErrInvalidMetadata, bh.hdrOffset)
	}
	return nil
}

// parseCopy parses the JSON area of a complete header copy whose checksum was
// verified.
func parseCopy(full []byte, bh *binHeader) (*headerCopy, error) {
	area := full[binHeaderSize:]
	end := bytes.IndexByte(area, 0)
	if end < 0 {
		return nil, fmt.Errorf("%w: JSON area not NUL-terminated", ErrInvalidMetadata)
	}
	js := area[:end]
	m, err := parseMetadata(js, bh.hdrSize)
	if err != nil {
		return nil, err
	}
	return &headerCopy{bin: *bh, json: js, meta: m}, nil
}

// encodeCopy serializes one header copy: binary header, JSON, checksum.
func encodeCopy(bh *binHeader, js []byte) ([]byte, error) {
	if int64(len(js)) >= bh.hdrSize-binHeaderSize {
		return nil, fmt.Errorf("%w: JSON metadata (%d bytes) does not fit the %d-byte JSON area", ErrMetadataFull, len(js), bh.hdrSize-binHeaderSize)
	}
	b := make([]byte, bh.hdrSize)
	if bh.secondary {
		copy(b, magicSecondary)
	} else {
		copy(b, magicPrimary)
	}
	binary.BigEndian.PutUint16(b[offVersion:], 2)
	binary.BigEndian.PutUint64(b[offHdrSize:], uint64(bh.hdrSize))
	binary.BigEndian.PutUint64(b[offSeqid:], bh.seqid)
	if err := putCString(b[offLabel:offLabel+lenLabel], bh.label, "label"); err != nil {
		return nil, err
	}
	if err := putCString(b[offCsumAlg:offCsumAlg+lenCsumAlg], bh.csumAlg, "checksum_alg"); err != nil {
		return nil, err
	}
	copy(b[offSalt:], bh.salt[:])
	if err := putCString(b[offUUID:offUUID+lenUUID], bh.uuid, "uuid"); err != nil {
		return nil, err
	}
	if err := putCString(b[offSubsystem:offSubsystem+lenSubsystem], bh.subsystem, "subsystem"); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint64(b[offHdrOffset:], uint64(bh.hdrOffset))
	copy(b[binHeaderSize:], js)
	copy(b[offCsum:], checksum(bh.csumAlg, b))
	return b, nil
}

// headerState is what reading both copies found.
type headerState struct {
	primary, secondary *headerCopy
	primaryErr         error
	secondaryErr       error
	best               *headerCopy
}

// readHeaders reads both copies and picks the valid one with the highest seqid. As
// cryptsetup (LUKS2_disk_hdr_read) does, the secondary copy is looked for at the
// primary's header size whenever the primary's binary header and checksum are sound,
// even if its JSON is not; only without a sound primary are all the possible offsets
// scanned. Otherwise a copy hidden in the unused tail of the primary's JSON area
// would be read here and not by cryptsetup.
func readHeaders(dev io.ReaderAt) (*headerState, error) {
	st := &headerState{}
	var sound *binHeader
	st.primary, sound, st.primaryErr = readCopy(dev, 0)
	if errors.Is(st.primaryErr, ErrLUKS1) {
		return nil, ErrLUKS1
	}
	if sound != nil {
		st.secondary, _, st.secondaryErr = readCopy(dev, sound.hdrSize)
	} else {
		st.secondaryErr = ErrNotLUKS
		for _, off := range secondaryOffsets {
			c, _, err := readCopy(dev, off)
			if err == nil {
				st.secondary, st.secondaryErr = c, nil
				break
			}
			if !errors.Is(err, ErrNotLUKS) && errors.Is(st.secondaryErr, ErrNotLUKS) {
				st.secondaryErr = err
			}
		}
	}
	if st.primary != nil && st.secondary != nil && st.primary.bin.uuid != st.secondary.bin.uuid {
		st.secondaryErr = fmt.Errorf("%w: secondary header UUID %q differs from primary %q", ErrInvalidMetadata, st.secondary.bin.uuid, st.primary.bin.uuid)
		st.secondary = nil
	}
	switch {
	case st.primary != nil && st.secondary != nil:
		st.best = st.primary
		if st.secondary.bin.seqid > st.primary.bin.seqid {
			st.best = st.secondary
		}
	case st.primary != nil:
		st.best = st.primary
	case st.secondary != nil:
		st.best = st.secondary
	default:
		if errors.Is(st.primaryErr, ErrNotLUKS) && errors.Is(st.secondaryErr, ErrNotLUKS) {
			return nil, ErrNotLUKS
		}
		return nil, fmt.Errorf("%w (primary: %v; secondary: %v)", ErrNoValidHeader, st.primaryErr, st.secondaryErr)
	}
	return st, nil
}
