package luks2

// Re-encryption metadata: what cryptsetup (lib/luks2/luks2_reencrypt.c,
// luks2_reencrypt_digest.c, luks2_keyslot_reenc.c, luks2_segment.c) writes while a
// volume is being re-encrypted. The on-disk protocol itself (hotzones, resilience,
// recovery) lives in package reencrypt; this file only reads and writes the objects.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
)

// ReencryptRequirement is the mandatory requirement (§3.10) cryptsetup 2.4 and later
// set while a volume is being re-encrypted; its version (2) enters the
// re-encryption digest.
const ReencryptRequirement = "online-reencrypt-v2"

// Segment flags of re-encryption (cryptsetup's luks2_reencrypt.c).
const (
	// FlagInReencryption marks the segment of the hotzone being rewritten: a volume
	// with such a segment was interrupted and needs recovery before anything else.
	FlagInReencryption = "in-reencryption"
	// FlagBackupPrevious marks the copy of the segment as it was before.
	FlagBackupPrevious = "backup-previous"
	// FlagBackupFinal marks the segment as it will be when re-encryption ends.
	FlagBackupFinal = "backup-final"
	// FlagBackupMoved marks the first segment moved by in-place encryption.
	FlagBackupMoved = "backup-moved-segment"
)

// ErrNotReencrypting means the volume has no re-encryption in progress.
var ErrNotReencrypting = errors.New("luks2: no re-encryption in progress")

// Segment is one segment object (§3.4) with the digests it is assigned to.
type Segment struct {
	// Type is "crypt" or "linear".
	Type string
	// Offset is the segment's start on the device in bytes.
	Offset uint64
	// Size in bytes; ignored when Dynamic.
	Size uint64
	// Dynamic means the segment extends to the end of the device.
	Dynamic bool
	// IVTweak is the sector number (512-byte units) of the segment's first byte.
	IVTweak uint64
	// Encryption and SectorSize describe a crypt segment.
	Encryption string
	SectorSize int
	// Flags are the segment flags (FlagInReencryption, FlagBackupPrevious, ...).
	Flags []string
	// Digests are the ids of the digests the segment is assigned to.
	Digests []int
}

// HasFlag reports whether s carries flag f.
func (s *Segment) HasFlag(f string) bool { return hasFlag(s.Flags, f) }

func (s *Segment) json() jsonSegment {
	j := jsonSegment{Type: s.Type, Offset: u64(s.Offset), Size: strconv.FormatUint(s.Size, 10), Flags: s.Flags}
	if s.Dynamic {
		j.Size = "dynamic"
	}
	if s.Type == "crypt" {
		iv := u64(s.IVTweak)
		j.IVTweak, j.Encryption, j.SectorSize = &iv, s.Encryption, s.SectorSize
	}
	return j
}

// ReencryptKeyslot is the keyslot of type "reencrypt": it stores no key, only the
// re-encryption parameters and the resilience area.
type ReencryptKeyslot struct {
	// ID is the keyslot id.
	ID int
	// Mode is "reencrypt", "encrypt" or "decrypt".
	Mode string
	// Direction is "forward" or "backward".
	Direction string
	// Resilience is the area type: "checksum", "journal", "datashift", "none", ...
	Resilience string
	// AreaOffset and AreaSize locate the resilience area (inside the keyslots area).
	AreaOffset, AreaSize uint64
	// Hash and SectorSize are the checksum resilience's hash and block size.
	Hash       string
	SectorSize int
	// ShiftSize is the datashift resilience's data shift in bytes.
	ShiftSize uint64
}

// reencKeyslotJSON is the reencrypt keyslot object, members in cryptsetup 2.6's
// order.
type reencKeyslotJSON struct {
	Area      reencAreaJSON `json:"area"`
	Type      string        `json:"type"`
	KeySize   int           `json:"key_size"`
	Mode      string        `json:"mode"`
	Direction string        `json:"direction"`
	Priority  *int          `json:"priority,omitempty"`
}

type reencAreaJSON struct {
	Offset     u64    `json:"offset"`
	Size       u64    `json:"size"`
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	SectorSize *int   `json:"sector_size,omitempty"`
	ShiftSize  *u64   `json:"shift_size,omitempty"`
}

// Reencryption is the re-encryption state a volume's metadata describes.
type Reencryption struct {
	// Keyslot is the reencrypt keyslot.
	Keyslot ReencryptKeyslot
	// Segments are the data segments by id, backups included.
	Segments map[int]Segment
	// DigestOld and DigestNew are the digests of the backup-previous and
	// backup-final segments (-1 when absent: encryption has no old key, decryption
	// no new one).
	DigestOld, DigestNew int
	// Version is the requirement's version (2 for "online-reencrypt-v2").
	Version int
}

// Active returns the segments that are not backups, by id.
func (r *Reencryption) Active() []Segment {
	var out []Segment
	for _, id := range sortedIDs(r.Segments) {
		s := r.Segments[id]
		if !s.HasFlag(FlagBackupPrevious) && !s.HasFlag(FlagBackupFinal) && !s.HasFlag(FlagBackupMoved) {
			out = append(out, s)
		}
	}
	return out
}

// Backup returns the segment carrying backup flag f.
func (r *Reencryption) Backup(f string) (Segment, bool) {
	for _, s := range r.Segments {
		if s.HasFlag(f) {
			return s, true
		}
	}
	return Segment{}, false
}

// Crashed reports whether a hotzone was being written when the run stopped.
func (r *Reencryption) Crashed() bool {
	for _, s := range r.Segments {
		if s.HasFlag(FlagInReencryption) {
			return true
		}
	}
	return false
}

func segmentOf(m *metadata, id int) Segment {
	e := m.segments[id]
	s := Segment{Type: e.sg.Type, Offset: uint64(e.sg.Offset), Size: e.size, Dynamic: e.dynamic,
		Encryption: e.sg.Encryption, SectorSize: e.sg.SectorSize, Flags: append([]string(nil), e.sg.Flags...)}
	if e.sg.IVTweak != nil {
		s.IVTweak = uint64(*e.sg.IVTweak)
	}
	for _, did := range sortedIDs(m.digests) {
		for _, x := range m.digests[did].segments {
			if x == id {
				s.Digests = append(s.Digests, did)
			}
		}
	}
	return s
}

// reencryptVersion returns the version of the online-reencrypt requirement, or 0.
func (m *metadata) reencryptVersion() int {
	if m.config.Requirements == nil {
		return 0
	}
	for _, r := range m.config.Requirements.Mandatory {
		switch r {
		case ReencryptRequirement:
			return 2
		case "online-reencrypt":
			return 1
		}
	}
	return 0
}

// parseReencrypt extracts the re-encryption state of m, or ErrNotReencrypting.
func parseReencrypt(m *metadata) (*Reencryption, error) {
	ver := m.reencryptVersion()
	ksid := -1
	for _, id := range sortedIDs(m.keyslots) {
		if m.keyslots[id].ks.Type == "reencrypt" {
			if ksid >= 0 {
				return nil, invalid("two reencrypt keyslots")
			}
			ksid = id
		}
	}
	if ver == 0 && ksid < 0 {
		return nil, ErrNotReencrypting
	}
	if ksid < 0 {
		return nil, invalid("requirement %s without a reencrypt keyslot", ReencryptRequirement)
	}
	if ver != 2 {
		return nil, fmt.Errorf("%w: re-encryption metadata version %d (run `cryptsetup repair` first)", ErrUnsupported, ver)
	}
	var kj reencKeyslotJSON
	if err := decodeStrict(m.keyslots[ksid].raw, &kj); err != nil {
		return nil, invalid("reencrypt keyslot %d: %v", ksid, err)
	}
	k := ReencryptKeyslot{ID: ksid, Mode: kj.Mode, Direction: kj.Direction, Resilience: kj.Area.Type,
		AreaOffset: uint64(kj.Area.Offset), AreaSize: uint64(kj.Area.Size), Hash: kj.Area.Hash}
	if kj.Area.SectorSize != nil {
		k.SectorSize = *kj.Area.SectorSize
	}
	if kj.Area.ShiftSize != nil {
		k.ShiftSize = uint64(*kj.Area.ShiftSize)
	}
	if kj.KeySize != 1 {
		return nil, invalid("reencrypt keyslot key_size %d", kj.KeySize)
	}
	switch k.Mode {
	case "reencrypt", "encrypt", "decrypt":
	default:
		return nil, invalid("reencrypt mode %q", k.Mode)
	}
	switch k.Direction {
	case "forward", "backward":
	default:
		return nil, invalid("reencrypt direction %q", k.Direction)
	}
	switch k.Resilience {
	case "checksum":
		if !knownHash(k.Hash) || k.SectorSize < 512 || k.SectorSize > 1<<20 || k.SectorSize&(k.SectorSize-1) != 0 {
			return nil, invalid("checksum resilience hash %q sector_size %d", k.Hash, k.SectorSize)
		}
	case "datashift", "datashift-journal", "datashift-checksum":
		if k.ShiftSize == 0 || k.ShiftSize%512 != 0 {
			return nil, invalid("datashift shift_size %d", k.ShiftSize)
		}
	case "journal", "none":
	default:
		return nil, invalid("resilience %q", k.Resilience)
	}
	r := &Reencryption{Keyslot: k, Segments: map[int]Segment{}, DigestOld: -1, DigestNew: -1, Version: ver}
	for id := range m.segments {
		r.Segments[id] = segmentOf(m, id)
	}
	for _, f := range []string{FlagBackupPrevious, FlagBackupFinal} {
		n := 0
		for _, s := range r.Segments {
			if s.HasFlag(f) {
				n++
				if len(s.Digests) > 1 {
					return nil, invalid("segment %s has %d digests", f, len(s.Digests))
				}
				if len(s.Digests) == 1 {
					if f == FlagBackupPrevious {
						r.DigestOld = s.Digests[0]
					} else {
						r.DigestNew = s.Digests[0]
					}
				}
			}
		}
		if n != 1 {
			return nil, invalid("%d segments flagged %s", n, f)
		}
	}
	// The active segments are numbered 0..n-1 and laid end to end.
	act := r.Active()
	for i, s := range act {
		if _, ok := r.Segments[i]; !ok || r.Segments[i].Offset != s.Offset {
			return nil, invalid("active segments are not numbered from 0")
		}
		if s.Dynamic && i != len(act)-1 {
			return nil, invalid("dynamic segment %d is not the last", i)
		}
	}
	if len(act) == 0 {
		return nil, invalid("no active segment")
	}
	return r, nil
}

// Reencryption returns the re-encryption state of the volume, or ErrNotReencrypting.
func (v *Volume) Reencryption() (*Reencryption, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return parseReencrypt(v.meta)
}

// UnlockDigest recovers the key of digest id with passphrase from any luks2 keyslot
// bound to that digest (priority ignore included). It returns the keyslot used.
func (v *Volume) UnlockDigest(ctx context.Context, passphrase []byte, digest int) (*VolumeKey, int, error) {
	v.mu.Lock()
	m := v.meta
	v.mu.Unlock()
	d := m.digests[digest]
	if d == nil {
		return nil, -1, fmt.Errorf("%w: digest %d", ErrInvalidMetadata, digest)
	}
	for _, id := range d.keyslots {
		if m.keyslots[id].ks.Type != "luks2" {
			continue
		}
		vk, err := v.openSlot(ctx, m, id, passphrase)
		if err == nil {
			return vk, id, nil
		}
		if ctx.Err() != nil {
			return nil, -1, ctx.Err()
		}
	}
	return nil, -1, ErrNoKeyslotAccepts
}

// VerifyDigest checks vk against digest id in constant time.
func (v *Volume) VerifyDigest(digest int, vk *VolumeKey) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	d := v.meta.digests[digest]
	if d == nil {
		return ErrWrongVolumeKey
	}
	// A digest no keyslot unlock has checked against the limits yet: hold it to them
	// before iterating, as verifyLocked does.
	if err := v.kdfLimitsLocked().check(KDFParams{Type: KDFPBKDF2, Iterations: d.dg.Iterations}); err != nil {
		return fmt.Errorf("luks2: digest %d: %w", digest, err)
	}
	if vk.Len() == 0 || !digestMatches(d, vk.Bytes()) {
		return ErrWrongVolumeKey
	}
	return nil
}

// reencWritableState is reencWritable followed by the re-encryption state in
// progress: what every change to a running re-encryption starts from. v.mu is held.
func (v *Volume) reencWritableState() (*Reencryption, error) {
	if err := v.reencWritable(); err != nil {
		return nil, err
	}
	return parseReencrypt(v.meta)
}

// reencWritable checks the volume may be changed by re-encryption: opened read-write
// and with no requirement other than the re-encryption one.
func (v *Volume) reencWritable() error {
	if v.mode != ReadWrite {
		return ErrReadOnly
	}
	if r := v.meta.config.Requirements; r != nil {
		for _, x := range r.Mandatory {
			if x != ReencryptRequirement {
				return fmt.Errorf("%w: %s", ErrUnsupportedRequirement, x)
			}
		}
	}
	return nil
}

// newDigest returns a pbkdf2 sha256 digest (§3.8) of key with the given iterations
// (benchmarked when 0), bound to no keyslot or segment.
func newDigest(ctx context.Context, key []byte, iterations int) (*digestEntry, error) {
	if iterations == 0 {
		var err error
		if iterations, err = digestIterations(ctx, "sha256"); err != nil {
			return nil, err
		}
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("luks2: random: %w", err)
	}
	nh, _ := hashFunc("sha256")
	sum := pbkdf2Key(nh, key, salt, iterations, 32)
	dg := jsonDigest{Type: "pbkdf2", Keyslots: []string{}, Segments: []string{}, Hash: "sha256", Iterations: iterations,
		Salt: base64.StdEncoding.EncodeToString(salt), Digest: base64.StdEncoding.EncodeToString(sum)}
	return &digestEntry{raw: mustRaw(dg), dg: dg, keyslots: []int{}, segments: []int{}, salt: salt, digest: sum}, nil
}

func (m *metadata) freeDigest() (int, error) {
	for id := 0; id < maxObjects; id++ {
		if m.digests[id] == nil {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%w: no free digest id", ErrMetadataFull)
}

// setDigestLists rewrites digest did's keyslots and segments lists.
func setDigestLists(d *digestEntry, keyslots, segments []int) (*digestEntry, error) {
	raw, err := setIDList(d.raw, "keyslots", keyslots)
	if err != nil {
		return nil, err
	}
	if raw, err = setIDList(raw, "segments", segments); err != nil {
		return nil, err
	}
	nd := *d
	nd.raw, nd.keyslots, nd.segments = raw, append([]int{}, keyslots...), append([]int{}, segments...)
	nd.dg.Keyslots, nd.dg.Segments = idStrings(keyslots), idStrings(segments)
	return &nd, nil
}

// AddUnboundKeyslot adds a keyslot for passphrase storing vk, a key the volume does
// not use yet, with a digest of its own bound to no segment (as `cryptsetup
// luksAddKey --unbound` and the first step of `cryptsetup reencrypt` do). It returns
// the keyslot and digest ids. digestIterations 0 means benchmarked.
func (v *Volume) AddUnboundKeyslot(ctx context.Context, vk *VolumeKey, passphrase []byte, slot int, opts *KeyslotOptions, digestIterations int) (int, int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.reencWritable(); err != nil {
		return 0, 0, err
	}
	if v.meta.reencryptVersion() != 0 {
		return 0, 0, fmt.Errorf("%w: re-encryption already in progress", ErrUnsupported)
	}
	id, e, err := v.writeKeyslot(ctx, v.meta, vk, passphrase, slot, opts)
	if err != nil {
		return 0, 0, err
	}
	n := v.meta.clone()
	n.keyslots[id] = e
	did, err := n.freeDigest()
	if err != nil {
		return 0, 0, err
	}
	d, err := newDigest(ctx, vk.Bytes(), digestIterations)
	if err != nil {
		return 0, 0, err
	}
	if d, err = setDigestLists(d, []int{id}, []int{}); err != nil {
		return 0, 0, err
	}
	n.digests[did] = d
	if err := v.commit(n, v.bin.label, v.bin.subsystem); err != nil {
		return 0, 0, err
	}
	return id, did, nil
}

// ReencryptInit describes the start of a re-encryption of the data segment with a
// new key (mode "reencrypt", direction "forward").
type ReencryptInit struct {
	// NewDigest is the digest of the new key (see AddUnboundKeyslot).
	NewDigest int
	// Final is the segment as it will be at the end (backup-final); its Flags and
	// Digests are set here.
	Final Segment
	// Resilience is "checksum" or "journal".
	Resilience string
	// Hash is the checksum hash (sha256 by default).
	Hash string
	// ChecksumBlock is the checksum block size (the largest sector size).
	ChecksumBlock int
	// DigestIterations of the re-encryption digest (1000 when 0).
	DigestIterations int
}

// BeginReencrypt writes, in one metadata update, everything cryptsetup's
// reencrypt_init writes: the backup-previous and backup-final segments, the
// reencrypt keyslot over the largest free gap of the keyslots area, the
// re-encryption digest over oldVK, newVK and those objects, and the requirement
// online-reencrypt-v2. Data is not touched.
func (v *Volume) BeginReencrypt(p ReencryptInit, oldVK, newVK *VolumeKey) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.reencWritable(); err != nil {
		return err
	}
	m := v.meta
	if m.reencryptVersion() != 0 {
		return fmt.Errorf("%w: re-encryption already in progress", ErrUnsupported)
	}
	sid, seg := m.dataSegment()
	if seg == nil || len(m.segments) != 1 || sid != 0 {
		return fmt.Errorf("%w: re-encryption needs exactly one data segment", ErrUnsupported)
	}
	oldDid, oldD := m.dataDigest()
	if oldD == nil || !digestMatches(oldD, oldVK.Bytes()) {
		return ErrWrongVolumeKey
	}
	newD := m.digests[p.NewDigest]
	if newD == nil || p.NewDigest == oldDid || !digestMatches(newD, newVK.Bytes()) {
		return ErrWrongVolumeKey
	}
	n := m.clone()
	prev := segmentOf(m, 0)
	prev.Flags = append(append([]string{}, prev.Flags...), FlagBackupPrevious)
	final := p.Final
	final.Flags = []string{FlagBackupFinal}
	for id, s := range map[int]Segment{1: prev, 2: final} {
		j := s.json()
		raw := mustRaw(j)
		e, err := reparseSegment(raw, j)
		if err != nil {
			return err
		}
		n.segments[id] = e
	}
	var err error
	if n.digests[oldDid], err = setDigestLists(oldD, oldD.keyslots, []int{0, 1}); err != nil {
		return err
	}
	if n.digests[p.NewDigest], err = setDigestLists(newD, newD.keyslots, []int{2}); err != nil {
		return err
	}
	// The reencrypt keyslot over the largest gap (cryptsetup: LUKS2_find_area_max_gap).
	ksid, err := n.freeKeyslot(AnySlot)
	if err != nil {
		return err
	}
	off, size := n.maxGap(v.bin.hdrSize)
	if size == 0 {
		return fmt.Errorf("%w: no room in the keyslots area for the resilience area", ErrNoFreeKeyslot)
	}
	area := reencAreaJSON{Offset: u64(off), Size: u64(size), Type: p.Resilience}
	switch p.Resilience {
	case "checksum":
		h := p.Hash
		if h == "" {
			h = "sha256"
		}
		bs := p.ChecksumBlock
		area.Hash, area.SectorSize = h, &bs
	case "journal":
	default:
		return fmt.Errorf("%w: resilience %q", ErrUnsupported, p.Resilience)
	}
	zero := 0
	kj := reencKeyslotJSON{Area: area, Type: "reencrypt", KeySize: 1, Mode: "reencrypt", Direction: "forward", Priority: &zero}
	if err := n.addReencryptState(ksid, kj, oldVK, newVK, p.DigestIterations); err != nil {
		return err
	}
	return v.commit(n, v.bin.label, v.bin.subsystem)
}

// addReencryptState adds to n the reencrypt keyslot ksid, the requirement and the
// re-encryption digest over the keys and the metadata.
func (n *metadata) addReencryptState(ksid int, kj reencKeyslotJSON, oldVK, newVK *VolumeKey, iterations int) error {
	kraw := mustRaw(kj)
	var ks jsonKeyslot
	if err := json.Unmarshal(kraw, &ks); err != nil {
		return fmt.Errorf("luks2: internal error: %w", err)
	}
	n.keyslots[ksid] = &keyslotEntry{raw: kraw, ks: ks}
	cfg := n.config
	req := &jsonRequirements{}
	if cfg.Requirements != nil {
		req.Mandatory = append(req.Mandatory, cfg.Requirements.Mandatory...)
	}
	req.Mandatory = append(req.Mandatory, ReencryptRequirement)
	cfg.Requirements = req
	rawCfg, err := setMember(n.rawCfg, "requirements", mustRaw(req))
	if err != nil {
		return err
	}
	n.config, n.rawCfg = cfg, rawCfg
	r, err := parseReencrypt(n)
	if err != nil {
		return fmt.Errorf("luks2: internal error: %w", err)
	}
	data, err := ReencryptDigestData(r, oldVK, newVK)
	if err != nil {
		return err
	}
	defer wipe(data)
	if iterations == 0 {
		iterations = 1000
	}
	d, err := newDigest(context.Background(), data, iterations)
	if err != nil {
		return err
	}
	did, err := n.freeDigest()
	if err != nil {
		return err
	}
	n.digests[did], err = setDigestLists(d, []int{ksid}, []int{})
	return err
}

// BeginInPlaceEncryption turns a volume just formatted (one crypt segment at offset
// shift, keyslots for vk) into what `cryptsetup reencrypt --encrypt --init-only
// --reduce-device-size 2*shift` writes for a device of devSize bytes whose data
// (the first devSize-2*shift bytes) has not been encrypted yet: linear segments
// for the data as it lies, its first shift bytes moved to the end of the device
// (the caller moves them), the backup-moved-segment, backup-previous and
// backup-final segments, a reencrypt keyslot (mode encrypt, direction backward,
// resilience datashift), the re-encryption digest and the requirement. One commit.
func (v *Volume) BeginInPlaceEncryption(devSize, shift int64, vk *VolumeKey, digestIterations int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.reencWritable(); err != nil {
		return err
	}
	m := v.meta
	sid, seg := m.dataSegment()
	if seg == nil || len(m.segments) != 1 || sid != 0 || uint64(seg.sg.Offset) != uint64(shift) || !seg.dynamic {
		return fmt.Errorf("%w: in-place encryption needs a fresh volume with its data segment at the shift", ErrUnsupported)
	}
	did, d := m.dataDigest()
	if d == nil || !digestMatches(d, vk.Bytes()) {
		return ErrWrongVolumeKey
	}
	data := devSize - 2*shift
	if shift <= 0 || shift%4096 != 0 || data < shift || data%int64(seg.sg.SectorSize) != 0 {
		return fmt.Errorf("%w: device of %d bytes, shift %d", ErrUnsupported, devSize, shift)
	}
	u := func(x int64) uint64 { return uint64(x) }
	var segs []Segment
	segs = append(segs, Segment{Type: "linear", Offset: u(devSize - shift), Size: u(shift)})
	if data > shift {
		segs = append(segs, Segment{Type: "linear", Offset: u(shift), Size: u(data - shift)})
	}
	moved := segs[0]
	moved.Flags = []string{FlagBackupMoved}
	prev := Segment{Type: "linear", Offset: 0, Size: u(data), Flags: []string{FlagBackupPrevious}}
	final := segmentOf(m, 0)
	final.Flags = []string{FlagBackupFinal}
	segs = append(segs, moved, prev, final)
	n := m.clone()
	n.segments = map[int]*segmentEntry{}
	for id, s := range segs {
		j := s.json()
		e, err := reparseSegment(mustRaw(j), j)
		if err != nil {
			return err
		}
		n.segments[id] = e
	}
	var err error
	if n.digests[did], err = setDigestLists(d, d.keyslots, []int{len(segs) - 1}); err != nil {
		return err
	}
	ksid, err := n.freeKeyslot(AnySlot)
	if err != nil {
		return err
	}
	off, err := n.allocArea(v.bin.hdrSize, 4096)
	if err != nil {
		return err
	}
	sh := u64(shift)
	zero := 0
	kj := reencKeyslotJSON{Area: reencAreaJSON{Offset: u64(off), Size: 4096, Type: "datashift", ShiftSize: &sh},
		Type: "reencrypt", KeySize: 1, Mode: "encrypt", Direction: "backward", Priority: &zero}
	if err := n.addReencryptState(ksid, kj, nil, vk, digestIterations); err != nil {
		return err
	}
	return v.commit(n, v.bin.label, v.bin.subsystem)
}

// reparseSegment builds a segmentEntry from its JSON through the parser's rules.
func reparseSegment(raw []byte, j jsonSegment) (*segmentEntry, error) {
	e := &segmentEntry{raw: raw, sg: j}
	if j.Size == "dynamic" {
		e.dynamic = true
	} else {
		v, err := parseDecimal(j.Size)
		if err != nil {
			return nil, invalid("segment size %q", j.Size)
		}
		e.size = v
	}
	if j.Type == "linear" {
		e.sg.SectorSize = 512
	}
	return e, nil
}

// maxGap returns the largest free range of the keyslots area (4096-aligned start).
func (m *metadata) maxGap(hdrSize int64) (uint64, uint64) {
	start := uint64(2 * hdrSize)
	end := start + uint64(m.config.KeyslotsSize)
	type span struct{ a, b uint64 }
	var used []span
	for _, e := range m.keyslots {
		if e.ks.Area != nil {
			used = append(used, span{uint64(e.ks.Area.Offset), uint64(e.ks.Area.Offset) + uint64(e.ks.Area.Size)})
		}
	}
	sort.Slice(used, func(i, j int) bool { return used[i].a < used[j].a })
	var bestOff, bestLen uint64
	pos := start
	consider := func(a uint64) {
		if a > pos && a-pos > bestLen {
			bestOff, bestLen = pos, a-pos
		}
	}
	for _, u := range used {
		consider(u.a)
		if u.b > pos {
			pos = u.b
		}
	}
	consider(end)
	return bestOff, bestLen
}

// SetReencryptSegments replaces the active (non-backup) segments with segs, numbered
// 0..len-1, each assigned to its Digests, and commits. The backup segments, the
// reencrypt keyslot and the digests' keyslots stay as they are.
func (v *Volume) SetReencryptSegments(segs []Segment) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, err := v.reencWritableState()
	if err != nil {
		return err
	}
	n := v.meta.clone()
	// Backups move to the ids after the active segments, in the order cryptsetup
	// adds them: previous, final, moved.
	var backups []Segment
	for _, f := range []string{FlagBackupPrevious, FlagBackupFinal, FlagBackupMoved} {
		if s, ok := r.Backup(f); ok {
			backups = append(backups, s)
		}
	}
	all := append(append([]Segment{}, segs...), backups...)
	n.segments = map[int]*segmentEntry{}
	assign := map[int][]int{}
	for id, s := range all {
		j := s.json()
		e, err := reparseSegment(mustRaw(j), j)
		if err != nil {
			return err
		}
		n.segments[id] = e
		for _, d := range s.Digests {
			if n.digests[d] == nil {
				return fmt.Errorf("%w: segment %d assigned to missing digest %d", ErrInvalidMetadata, id, d)
			}
			assign[d] = append(assign[d], id)
		}
	}
	for did, d := range n.digests {
		if n.digests[did], err = setDigestLists(d, d.keyslots, append([]int{}, assign[did]...)); err != nil {
			return err
		}
	}
	return v.commit(n, v.bin.label, v.bin.subsystem)
}

// WriteReencryptArea writes b at the start of the resilience area and syncs.
func (v *Volume) WriteReencryptArea(b []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, err := v.reencWritableState()
	if err != nil {
		return err
	}
	if uint64(len(b)) > r.Keyslot.AreaSize {
		return fmt.Errorf("%w: %d bytes do not fit the %d-byte resilience area", ErrUnsupported, len(b), r.Keyslot.AreaSize)
	}
	if err := writeFull(v.dev, b, int64(r.Keyslot.AreaOffset)); err != nil {
		return fmt.Errorf("luks2: writing resilience area: %w", err)
	}
	if err := v.dev.Sync(); err != nil {
		return fmt.Errorf("luks2: sync: %w", err)
	}
	return nil
}

// ReadReencryptArea reads len(b) bytes from the start of the resilience area.
func (v *Volume) ReadReencryptArea(b []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, err := parseReencrypt(v.meta)
	if err != nil {
		return err
	}
	if uint64(len(b)) > r.Keyslot.AreaSize {
		return fmt.Errorf("%w: read beyond the resilience area", ErrInvalidMetadata)
	}
	return readFull(v.dev, b, int64(r.Keyslot.AreaOffset))
}

// FinishReencrypt ends a re-encryption whose data is all rewritten and synced (the
// caller's guarantee: the last hotzone may still be flagged in-reencryption, so
// that there is no window in which the volume says "done" with the re-encryption
// metadata still present), in one metadata update: the data segment becomes final (the backup-final segment without its flag,
// assigned to the new digest); the keyslots of the old digest, the old digest, the
// reencrypt keyslot, its digest, the backup segments and the requirement go; tokens
// bound only to removed keyslots stay, bound to none. Then the areas of the removed
// luks2 keyslots (which hold the old key) are overwritten with random data.
func (v *Volume) FinishReencrypt(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, err := v.reencWritableState()
	if err != nil {
		return err
	}
	final, _ := r.Backup(FlagBackupFinal)
	drop := map[int]bool{r.Keyslot.ID: true}
	var wipeAreas []*keyslotEntry
	if r.DigestOld >= 0 && r.DigestOld != r.DigestNew {
		for _, k := range v.meta.digests[r.DigestOld].keyslots {
			drop[k] = true
		}
	}
	for k := range drop {
		// The resilience area holds checksums or ciphertext under the old key,
		// which is destroyed with the old keyslots: only those are wiped.
		if k != r.Keyslot.ID {
			wipeAreas = append(wipeAreas, v.meta.keyslots[k])
		}
	}
	n, err := v.meta.withoutKeyslots(drop)
	if err != nil {
		return err
	}
	for did, d := range n.digests {
		if did == r.DigestOld && r.DigestOld != r.DigestNew || len(d.keyslots) == 0 && did != r.DigestNew {
			delete(n.digests, did)
		}
	}
	final.Flags = nil
	j := final.json()
	e, err := reparseSegment(mustRaw(j), j)
	if err != nil {
		return err
	}
	n.segments = map[int]*segmentEntry{0: e}
	if r.DigestNew >= 0 {
		d := n.digests[r.DigestNew]
		if n.digests[r.DigestNew], err = setDigestLists(d, d.keyslots, []int{0}); err != nil {
			return err
		}
	}
	cfg := n.config
	var keep []string
	for _, x := range cfg.Requirements.Mandatory {
		if x != ReencryptRequirement {
			keep = append(keep, x)
		}
	}
	if len(keep) == 0 {
		cfg.Requirements = nil
		n.rawCfg, err = deleteMember(n.rawCfg, "requirements")
	} else {
		cfg.Requirements = &jsonRequirements{Mandatory: keep}
		n.rawCfg, err = setMember(n.rawCfg, "requirements", mustRaw(cfg.Requirements))
	}
	if err != nil {
		return err
	}
	n.config = cfg
	if err := v.commit(n, v.bin.label, v.bin.subsystem); err != nil {
		return err
	}
	v.roReason = nil
	for _, e := range wipeAreas {
		if err := v.wipeArea(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// deleteMember returns the JSON object raw without member key.
func deleteMember(raw []byte, key string) ([]byte, error) {
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, invalid("config: %v", err)
	}
	delete(m, key)
	// Keep cryptsetup's order for the members we know.
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	order := []string{"json_size", "keyslots_size", "flags", "requirements"}
	seen := map[string]bool{}
	emit := func(k string) {
		if v, ok := m[k]; ok && !seen[k] {
			seen[k] = true
			if !first {
				b.WriteByte(',')
			}
			first = false
			kb, _ := json.Marshal(k)
			b.Write(kb)
			b.WriteByte(':')
			b.Write(v)
		}
	}
	for _, k := range order {
		emit(k)
	}
	rest := make([]string, 0, len(m))
	for k := range m {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	for _, k := range rest {
		emit(k)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// ReencryptDigestData returns the bytes cryptsetup's re-encryption digest covers
// (luks2_reencrypt_digest.c, reencrypt_assembly_verification_data): "v" and '0'+version,
// the old and the new key, the reencrypt keyslot's parameters and the backup
// segments, strings raw and integers big-endian. The caller wipes the result (it
// holds keys).
func ReencryptDigestData(r *Reencryption, oldVK, newVK *VolumeKey) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte(0x76)
	b.WriteByte(byte(0x30 + r.Version))
	if r.DigestOld >= 0 {
		if oldVK.Len() == 0 {
			return nil, fmt.Errorf("%w: old volume key needed", ErrWrongVolumeKey)
		}
		b.Write(oldVK.Bytes())
	}
	if r.DigestNew >= 0 && r.DigestNew != r.DigestOld {
		if newVK.Len() == 0 {
			return nil, fmt.Errorf("%w: new volume key needed", ErrWrongVolumeKey)
		}
		b.Write(newVK.Bytes())
	}
	if r.DigestOld < 0 && r.DigestNew < 0 {
		return nil, invalid("re-encryption without keys")
	}
	str := func(s string) error {
		if s == "" || len(s) > 64 {
			return invalid("re-encryption digest string %q", s)
		}
		b.WriteString(s)
		return nil
	}
	be64 := func(x uint64) { _ = binary.Write(&b, binary.BigEndian, x) }
	be32 := func(x uint32) { _ = binary.Write(&b, binary.BigEndian, x) }
	k := r.Keyslot
	for _, s := range []string{k.Mode, k.Direction, k.Resilience} {
		if err := str(s); err != nil {
			return nil, err
		}
	}
	be64(k.AreaOffset)
	be64(k.AreaSize)
	switch k.Resilience {
	case "checksum", "datashift-checksum":
		if err := str(k.Hash); err != nil {
			return nil, err
		}
		be32(uint32(k.SectorSize))
		if k.Resilience == "datashift-checksum" {
			be64(k.ShiftSize)
		}
	case "datashift", "datashift-journal":
		be64(k.ShiftSize)
	}
	seg := func(s Segment) error {
		if err := str(s.Type); err != nil {
			return err
		}
		be64(s.Offset)
		if s.Dynamic {
			b.WriteString("dynamic")
		} else {
			be64(s.Size)
		}
		if s.Type == "crypt" {
			be64(s.IVTweak)
			if err := str(s.Encryption); err != nil {
				return err
			}
			be32(uint32(s.SectorSize))
		} else if s.Type != "linear" {
			return invalid("segment type %q", s.Type)
		}
		return nil
	}
	for _, f := range []string{FlagBackupPrevious, FlagBackupFinal, FlagBackupMoved} {
		s, ok := r.Backup(f)
		if !ok {
			if f == FlagBackupMoved {
				continue
			}
			return nil, invalid("missing %s segment", f)
		}
		if err := seg(s); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// VerifyReencryptDigest checks the re-encryption digest (bound to the reencrypt
// keyslot) against the metadata and the keys, as cryptsetup does before it touches
// data: metadata changed by anyone without the keys fails with ErrWrongVolumeKey.
func (v *Volume) VerifyReencryptDigest(oldVK, newVK *VolumeKey) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, err := parseReencrypt(v.meta)
	if err != nil {
		return err
	}
	_, d := v.meta.digestOf(r.Keyslot.ID)
	if d == nil {
		return fmt.Errorf("%w: re-encryption digest missing (run `cryptsetup repair`)", ErrInvalidMetadata)
	}
	data, err := ReencryptDigestData(r, oldVK, newVK)
	if err != nil {
		return err
	}
	defer wipe(data)
	if !digestMatches(d, data) {
		return fmt.Errorf("%w: re-encryption metadata does not match its digest", ErrWrongVolumeKey)
	}
	return nil
}

func hasFlag(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}
