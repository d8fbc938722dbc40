package luks2

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
)

// Volume is an open LUKS2 volume. Its methods are safe for concurrent use. A Volume
// opened with OpenFile owns the file and closes it in Close.
type Volume struct {
	mu   sync.Mutex
	dev  Device
	size int64
	file *os.File
	mode Mode

	st   *headerState
	meta *metadata
	bin  binHeader // of the best copy
	// saltP and saltS are the per-copy salts written back with each copy.
	saltP, saltS [lenSalt]byte
	// roReason is non-nil when the volume cannot be written or activated here.
	roReason error
	// limits, when set, replace DefaultKDFLimits for Unlock.
	limits *KDFLimits
	// locker takes the device's metadata lock (nil: no inter-process locking);
	// lockDepth counts nested holds and lockRelease gives the lock back.
	locker      deviceLocker
	lockDepth   int
	lockRelease func()
}

// SetKDFLimits replaces the KDF cost limits Unlock and UnlockKeyslot apply (by
// default DefaultKDFLimits, computed at each unlock).
func (v *Volume) SetKDFLimits(l KDFLimits) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.limits = &l
}

func (v *Volume) kdfLimits() KDFLimits {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.kdfLimitsLocked()
}

// kdfLimitsLocked is kdfLimits with v.mu held.
func (v *Volume) kdfLimitsLocked() KDFLimits {
	if v.limits != nil {
		return *v.limits
	}
	return DefaultKDFLimits()
}

// OpenDevice reads the LUKS2 headers of dev, whose size in bytes is size. The Volume
// does not own dev. mode ReadWrite allows changes; a volume with unsupported mandatory
// requirements still opens, but all changes fail with ErrUnsupportedRequirement.
func OpenDevice(dev Device, size int64, mode Mode) (*Volume, error) {
	v := &Volume{dev: dev, size: size, mode: mode}
	if err := v.load(); err != nil {
		return nil, err
	}
	return v, nil
}

// OpenFile opens the block device or image file at path and reads its headers. Close
// the Volume to close the file.
func OpenFile(path string, mode Mode) (*Volume, error) {
	f, dev, size, err := openPath(path, mode)
	if err != nil {
		return nil, err
	}
	v, err := OpenDevice(dev, size, mode)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	v.file = f
	if mode == ReadWrite {
		v.locker = newLocker(f)
	}
	return v, nil
}

// Close closes the file opened by OpenFile; for OpenDevice it does nothing.
func (v *Volume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.file != nil {
		err := v.file.Close()
		v.file = nil
		return err
	}
	return nil
}

// load (re)reads both header copies.
func (v *Volume) load() error {
	st, err := readHeaders(v.dev)
	if err != nil {
		return err
	}
	v.st = st
	v.meta = st.best.meta
	v.bin = st.best.bin
	if st.primary != nil {
		v.saltP = st.primary.bin.salt
	} else {
		v.saltP = st.best.bin.salt
	}
	if st.secondary != nil {
		v.saltS = st.secondary.bin.salt
	} else {
		v.saltS = st.best.bin.salt
	}
	v.roReason = nil
	if r := v.meta.config.Requirements; r != nil && len(r.Mandatory) > 0 {
		v.roReason = fmt.Errorf("%w: %s", ErrUnsupportedRequirement, strings.Join(r.Mandatory, ", "))
	}
	return nil
}

// writable reports whether metadata may be changed.
func (v *Volume) writable() error {
	if v.mode != ReadWrite {
		return ErrReadOnly
	}
	return v.roReason
}

// Priority is a keyslot's priority (§3.5): the order in which keyslots are tried.
// Its zero value is PriorityNormal; the on-disk numbers differ (see Spec).
type Priority int

const (
	// PriorityNormal (on disk 1, or absent) keyslots are tried after preferred ones.
	PriorityNormal Priority = iota
	// PriorityPrefer (on disk 2) keyslots are tried first.
	PriorityPrefer
	// PriorityIgnore (on disk 0) keyslots are only used when named explicitly.
	PriorityIgnore
)

// String returns "normal", "prefer" or "ignore".
func (p Priority) String() string {
	switch p {
	case PriorityPrefer:
		return "prefer"
	case PriorityIgnore:
		return "ignore"
	case PriorityNormal:
		return "normal"
	}
	return fmt.Sprintf("Priority(%d)", int(p))
}

// Spec returns the number the specification stores: 0 ignore, 1 normal, 2 prefer.
func (p Priority) Spec() int {
	switch p {
	case PriorityPrefer:
		return 2
	case PriorityIgnore:
		return 0
	}
	return 1
}

// PriorityFromSpec converts the on-disk number (0, 1, 2) to a Priority.
func PriorityFromSpec(n int) (Priority, error) {
	switch n {
	case 0:
		return PriorityIgnore, nil
	case 1:
		return PriorityNormal, nil
	case 2:
		return PriorityPrefer, nil
	}
	return 0, fmt.Errorf("%w: priority %d", ErrUnsupported, n)
}

// MarshalText writes the name, for JSON output.
func (p Priority) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Metadata describes a volume; it is a copy that later changes do not affect.
type Metadata struct {
	// UUID, Label and Subsystem come from the binary header (§2).
	UUID      string `json:"uuid"`
	Label     string `json:"label"`
	Subsystem string `json:"subsystem"`
	// Seqid is the sequence id of the copy in use.
	Seqid uint64 `json:"seqid"`
	// HeaderSize is the size of one header copy (binary header + JSON area).
	HeaderSize int64 `json:"header_size"`
	// KeyslotsSize is the size of the keyslots area after the two copies.
	KeyslotsSize int64 `json:"keyslots_size"`
	// Cipher is the data segment's encryption, e.g. "aes-xts-plain64".
	Cipher string `json:"cipher"`
	// KeySize is the volume key size in bytes.
	KeySize int `json:"key_size"`
	// SectorSize is the data segment's encryption sector size in bytes.
	SectorSize int `json:"sector_size"`
	// DataOffset is where the data segment starts, in bytes.
	DataOffset int64 `json:"data_offset"`
	// DataSize is the data segment's size in bytes (for a "dynamic" segment, the
	// device size minus DataOffset; 0 for a header backup or detached header).
	DataSize int64 `json:"data_size"`
	// DynamicSize is true when the segment size is "dynamic" (follows the device).
	DynamicSize bool `json:"dynamic_size"`
	// IVTweak is the data segment's iv_tweak.
	IVTweak uint64 `json:"iv_tweak"`
	// Flags are the persistent activation flags (config.flags).
	Flags []string `json:"flags"`
	// Requirements are config.requirements.mandatory.
	Requirements []string `json:"requirements,omitempty"`
	// ReadOnly is set when unsupported requirements forbid writes and activation.
	ReadOnly bool `json:"read_only"`
	// PrimaryValid and SecondaryValid say which header copies are valid and
	// current; when either is false, Repair restores it.
	PrimaryValid   bool `json:"primary_valid"`
	SecondaryValid bool `json:"secondary_valid"`
	// Keyslots, by id.
	Keyslots []KeyslotInfo `json:"keyslots"`
	// Tokens, by id.
	Tokens []TokenInfo `json:"tokens"`
	// JSON is the metadata text of the copy in use, as on disk.
	JSON json.RawMessage `json:"-"`
}

// KeyslotInfo describes one keyslot.
type KeyslotInfo struct {
	// ID is the keyslot number (0-31).
	ID int `json:"id"`
	// Type is "luks2" for usable keyslots.
	Type string `json:"type"`
	// KeySize is the size in bytes of the key the slot stores.
	KeySize int `json:"key_size"`
	// Priority is the order in which Unlock tries the keyslot.
	Priority Priority `json:"priority"`
	// KDF are the key derivation parameters (the salt is not exposed).
	KDF KDFParams `json:"kdf"`
	// AreaOffset and AreaSize locate the keyslot area in bytes.
	AreaOffset int64 `json:"area_offset"`
	AreaSize   int64 `json:"area_size"`
	// AreaCipher is the keyslot area encryption and AreaKeySize its key size.
	AreaCipher  string `json:"area_cipher"`
	AreaKeySize int    `json:"area_key_size"`
	// AFStripes and AFHash describe the anti-forensic splitter.
	AFStripes int    `json:"af_stripes"`
	AFHash    string `json:"af_hash"`
	// Digest is the id of the digest that verifies the slot's key, or -1.
	Digest int `json:"digest"`
}

// TokenInfo describes one token.
type TokenInfo struct {
	// ID is the token number (0-31).
	ID int `json:"id"`
	// Type is the token's "type" member, e.g. "systemd-tpm2" or "clevis".
	Type string `json:"type"`
	// Keyslots are the keyslots the token is bound to.
	Keyslots []int `json:"keyslots"`
}

// dataSegment returns the id and entry of the data segment (the lowest-id crypt
// segment).
func (m *metadata) dataSegment() (int, *segmentEntry) {
	ids := make([]int, 0, len(m.segments))
	for id, s := range m.segments {
		if s.sg.Type == "crypt" {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return -1, nil
	}
	sort.Ints(ids)
	return ids[0], m.segments[ids[0]]
}

func (m *metadata) digestOf(slot int) (int, *digestEntry) {
	for id, d := range m.digests {
		for _, k := range d.keyslots {
			if k == slot {
				return id, d
			}
		}
	}
	return -1, nil
}

func kdfParamsOf(k *jsonKDF) KDFParams {
	if k == nil {
		return KDFParams{}
	}
	return KDFParams{Type: k.Type, Hash: k.Hash, Iterations: k.Iterations, Time: k.Time, MemoryKiB: k.Memory, Parallel: k.CPUs}
}

func keyslotInfo(m *metadata, id int) KeyslotInfo {
	e := m.keyslots[id]
	ks := e.ks
	info := KeyslotInfo{ID: id, Type: ks.Type, KeySize: ks.KeySize, KDF: kdfParamsOf(ks.KDF)}
	if ks.Priority != nil {
		info.Priority, _ = PriorityFromSpec(*ks.Priority)
	}
	if ks.Area != nil {
		info.AreaOffset, info.AreaSize = int64(ks.Area.Offset), int64(ks.Area.Size)
		info.AreaCipher, info.AreaKeySize = ks.Area.Encryption, ks.Area.KeySize
	}
	if ks.AF != nil {
		info.AFStripes, info.AFHash = ks.AF.Stripes, ks.AF.Hash
	}
	info.Digest, _ = m.digestOf(id)
	return info
}

// Metadata returns a description of the volume as currently on disk.
func (v *Volume) Metadata() *Metadata {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.meta
	md := &Metadata{
		UUID: v.bin.uuid, Label: v.bin.label, Subsystem: v.bin.subsystem,
		Seqid: v.bin.seqid, HeaderSize: v.bin.hdrSize,
		KeyslotsSize: int64(m.config.KeyslotsSize),
		Flags:        append([]string{}, m.config.Flags...),
		ReadOnly:     v.roReason != nil,
		JSON:         append(json.RawMessage(nil), m.encode()...),
		Keyslots:     []KeyslotInfo{},
		Tokens:       []TokenInfo{},
	}
	md.PrimaryValid = v.st.primary != nil && v.st.primary.bin.seqid == v.bin.seqid
	md.SecondaryValid = v.st.secondary != nil && v.st.secondary.bin.seqid == v.bin.seqid
	if r := m.config.Requirements; r != nil {
		md.Requirements = append([]string{}, r.Mandatory...)
	}
	if _, s := m.dataSegment(); s != nil {
		md.Cipher = s.sg.Encryption
		md.SectorSize = s.sg.SectorSize
		md.DataOffset = int64(s.sg.Offset)
		md.DynamicSize = s.dynamic
		if s.sg.IVTweak != nil {
			md.IVTweak = uint64(*s.sg.IVTweak)
		}
		if s.dynamic {
			if v.size > md.DataOffset {
				md.DataSize = (v.size - md.DataOffset) / int64(s.sg.SectorSize) * int64(s.sg.SectorSize)
			}
		} else {
			md.DataSize = int64(s.size)
		}
	}
	if _, d := m.dataDigest(); d != nil {
		for _, k := range d.keyslots {
			md.KeySize = m.keyslots[k].ks.KeySize
			break
		}
	}
	for _, id := range sortedIDs(m.keyslots) {
		md.Keyslots = append(md.Keyslots, keyslotInfo(m, id))
	}
	for _, id := range sortedIDs(m.tokens) {
		t := m.tokens[id]
		md.Tokens = append(md.Tokens, TokenInfo{ID: id, Type: t.typ, Keyslots: append([]int{}, t.keyslots...)})
	}
	if md.KeySize == 0 && len(md.Keyslots) > 0 {
		md.KeySize = md.Keyslots[0].KeySize
	}
	return md
}

// dataDigest returns the digest that covers the data segment.
func (m *metadata) dataDigest() (int, *digestEntry) {
	sid, _ := m.dataSegment()
	ids := sortedIDs(m.digests)
	for _, id := range ids {
		for _, s := range m.digests[id].segments {
			if s == sid {
				return id, m.digests[id]
			}
		}
	}
	return -1, nil
}

func sortedIDs[E any](m map[int]E) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

// CryptTarget is what device-mapper needs to map the data segment (dm-crypt table:
// "<offset> <size> crypt <cipher> <key> <iv_offset> <device> <offset> [flags]").
type CryptTarget struct {
	// Cipher is the dm-crypt cipher spec, e.g. "aes-xts-plain64".
	Cipher string
	// Key is the volume key; the caller wipes it (it is a copy).
	Key *VolumeKey
	// IVOffset is iv_tweak, in 512-byte sectors.
	IVOffset uint64
	// Offset is the data segment's start in bytes.
	Offset int64
	// Size is the data segment's size in bytes.
	Size int64
	// SectorSize is the encryption sector size in bytes.
	SectorSize int
	// Flags are the persistent flags (allow-discards, same-cpu-crypt, ...).
	Flags []string
}

// CryptTarget checks vk against the volume's digest and returns the dm-crypt
// parameters. It fails with ErrUnsupportedRequirement for volumes with unknown
// mandatory requirements and with ErrUnsupportedCipher for a data segment encryption
// outside the allow-list: they must not be activated by this package.
func (v *Volume) CryptTarget(vk *VolumeKey) (*CryptTarget, error) {
	if err := v.VerifyVolumeKey(vk); err != nil {
		return nil, err
	}
	md := v.Metadata()
	v.mu.Lock()
	ro := v.roReason
	v.mu.Unlock()
	if ro != nil {
		return nil, ro
	}
	v.mu.Lock()
	cerr := v.meta.checkDataCiphers()
	v.mu.Unlock()
	if cerr != nil {
		return nil, cerr
	}
	if md.Cipher == "" {
		return nil, fmt.Errorf("%w: no crypt segment", ErrInvalidMetadata)
	}
	v.mu.Lock()
	_, seg := v.meta.dataSegment()
	v.mu.Unlock()
	if len(seg.sg.Integrity) > 0 {
		return nil, fmt.Errorf("%w: data segment uses dm-integrity (authenticated encryption); activate it with cryptsetup", ErrUnsupported)
	}
	// The segment must lie on the device: a header edited (or restored) offline can
	// name any offset and size, and nothing would map past the device's end.
	if md.DataSize <= 0 || md.DataOffset > v.size-md.DataSize {
		return nil, fmt.Errorf("%w: data segment [%d, +%d) does not fit the %d-byte device", ErrDeviceTooSmall, md.DataOffset, md.DataSize, v.size)
	}
	return &CryptTarget{
		Cipher: md.Cipher, Key: NewVolumeKey(vk.Bytes()), IVOffset: md.IVTweak,
		Offset: md.DataOffset, Size: md.DataSize, SectorSize: md.SectorSize, Flags: md.Flags,
	}, nil
}

// commit writes newMeta (and newBin's label/subsystem) as the next seqid. The copy
// that is not the only valid copy on disk is written first; each write is followed
// by Sync, so at every instant a valid copy holds the old or the new state.
func (v *Volume) commit(newMeta *metadata, label, subsystem string) error {
	release, err := v.lockUnchanged()
	if err != nil {
		return err
	}
	defer release()
	js := newMeta.encode()
	if int64(len(js)) >= v.bin.hdrSize-binHeaderSize {
		return fmt.Errorf("%w: JSON metadata (%d bytes) does not fit the %d-byte JSON area", ErrMetadataFull, len(js), v.bin.hdrSize-binHeaderSize)
	}
	// Re-validate what we are about to write: never write what we would not read.
	m2, err := parseMetadata(js, v.bin.hdrSize)
	if err != nil {
		return fmt.Errorf("luks2: internal error, refusing to write metadata: %w", err)
	}
	bh := v.bin
	bh.label, bh.subsystem = label, subsystem
	bh.csumAlg = "sha256"
	seq := v.bin.seqid
	if v.st.primary != nil && v.st.primary.bin.seqid > seq {
		seq = v.st.primary.bin.seqid
	}
	if v.st.secondary != nil && v.st.secondary.bin.seqid > seq {
		seq = v.st.secondary.bin.seqid
	}
	bh.seqid = seq + 1
	p, s, pb, sb, err := v.encodeCopies(bh, js)
	if err != nil {
		return err
	}
	type w struct {
		b   []byte
		off int64
	}
	order := []w{{pb, 0}, {sb, bh.hdrSize}}
	// Write first the copy that is not needed: the secondary when it is missing or
	// stale and the primary is current; otherwise the primary.
	primaryCurrent := v.st.primary != nil && v.st.primary.bin.seqid == v.bin.seqid
	secondaryCurrent := v.st.secondary != nil && v.st.secondary.bin.seqid == v.bin.seqid
	if primaryCurrent && !secondaryCurrent {
		order[0], order[1] = order[1], order[0]
	}
	for _, x := range order {
		if err := writeFull(v.dev, x.b, x.off); err != nil {
			v.reloadAfterFailure()
			return fmt.Errorf("luks2: writing header at %d: %w", x.off, err)
		}
		if err := v.dev.Sync(); err != nil {
			v.reloadAfterFailure()
			return fmt.Errorf("luks2: sync: %w", err)
		}
	}
	pc := &headerCopy{bin: p, json: js, meta: m2}
	sc := &headerCopy{bin: s, json: js, meta: m2}
	v.st = &headerState{primary: pc, secondary: sc, best: pc}
	v.meta, v.bin = m2, p
	return nil
}

// encodeCopies encodes the primary and secondary header copies of bh with the JSON
// area js, each with its own offset and salt.
func (v *Volume) encodeCopies(bh binHeader, js []byte) (p, s binHeader, pb, sb []byte, err error) {
	p, s = bh, bh
	p.secondary, p.hdrOffset, p.salt = false, 0, v.saltP
	s.secondary, s.hdrOffset, s.salt = true, bh.hdrSize, v.saltS
	if pb, err = encodeCopy(&p, js); err != nil {
		return
	}
	sb, err = encodeCopy(&s, js)
	return
}

// reloadAfterFailure re-reads the headers after a failed write so that the Volume
// reflects the disk; if that fails too, the old state is kept.
func (v *Volume) reloadAfterFailure() {
	st, meta, bin, ro, sp, ss := v.st, v.meta, v.bin, v.roReason, v.saltP, v.saltS
	if err := v.load(); err != nil {
		v.st, v.meta, v.bin, v.roReason, v.saltP, v.saltS = st, meta, bin, ro, sp, ss
	}
}

// SetLabel changes the label and subsystem in the binary headers.
func (v *Volume) SetLabel(label, subsystem string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	release, err := v.beginWrite(context.Background())
	if err != nil {
		return err
	}
	defer release()
	return v.commit(v.meta.clone(), label, subsystem)
}
