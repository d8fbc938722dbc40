package reencrypt

import (
	"fmt"

	"github.com/diskcryptd/diskcryptd/luks2"
)

// plan is what a volume in re-encryption says about the run: where the data is, the
// old and new segment parameters and how far the run got.
type plan struct {
	r *luks2.Reencryption
	// prev and final are the backup-previous and backup-final segments.
	prev, final luks2.Segment
	// dataOffset is where the data starts on the device; total the data size.
	dataOffset, total uint64
	// offset is how many bytes from the start are already re-encrypted.
	offset uint64
	// done is set when every byte is re-encrypted (only the teardown is left).
	done bool
}

// loadPlan checks that the re-encryption is one this package runs (mode reencrypt,
// direction forward, crypt segments of the same place and size, checksum or journal
// resilience) and computes where it stands. devSize is the device size in bytes.
func loadPlan(r *luks2.Reencryption, devSize int64) (*plan, error) {
	k := r.Keyslot
	if k.Mode != "reencrypt" || k.Direction != "forward" {
		return nil, fmt.Errorf("%w: mode %q direction %q", ErrUnsupported, k.Mode, k.Direction)
	}
	switch k.Resilience {
	case "checksum", "journal":
	default:
		return nil, fmt.Errorf("%w: resilience %q", ErrUnsupported, k.Resilience)
	}
	p := &plan{r: r}
	var ok bool
	if p.prev, ok = r.Backup(luks2.FlagBackupPrevious); !ok {
		return nil, fmt.Errorf("%w: no backup-previous segment", ErrInvalid)
	}
	if p.final, ok = r.Backup(luks2.FlagBackupFinal); !ok {
		return nil, fmt.Errorf("%w: no backup-final segment", ErrInvalid)
	}
	if _, moved := r.Backup(luks2.FlagBackupMoved); moved {
		return nil, fmt.Errorf("%w: moved segment (data shift)", ErrUnsupported)
	}
	if p.prev.Type != "crypt" || p.final.Type != "crypt" || p.prev.Offset != p.final.Offset ||
		!p.prev.Dynamic || !p.final.Dynamic || p.prev.IVTweak != p.final.IVTweak {
		return nil, fmt.Errorf("%w: old and new segments differ in place or size", ErrUnsupported)
	}
	if r.DigestOld < 0 || r.DigestNew < 0 || r.DigestOld == r.DigestNew {
		return nil, fmt.Errorf("%w: digests old %d new %d", ErrInvalid, r.DigestOld, r.DigestNew)
	}
	p.dataOffset = p.final.Offset
	if uint64(devSize) <= p.dataOffset {
		return nil, fmt.Errorf("%w: device smaller than the data offset", ErrInvalid)
	}
	align := uint64(max(p.prev.SectorSize, p.final.SectorSize))
	p.total = (uint64(devSize) - p.dataOffset) / align * align
	if k.Resilience == "checksum" && (k.SectorSize%p.prev.SectorSize != 0 || k.SectorSize%p.final.SectorSize != 0) {
		return nil, fmt.Errorf("%w: checksum block %d not a multiple of the sector sizes", ErrInvalid, k.SectorSize)
	}
	act := r.Active()
	has := func(s luks2.Segment, d int) bool {
		return len(s.Digests) > 0 && s.Digests[0] == d || len(s.Digests) > 1 && s.Digests[1] == d
	}
	switch {
	case r.Crashed():
		// The hotzone segment tells where we are; recovery handles it.
		for _, s := range act {
			if s.HasFlag(luks2.FlagInReencryption) {
				p.offset = s.Offset - p.dataOffset
			}
		}
	case len(act) == 1 && has(act[0], r.DigestNew) && !has(act[0], r.DigestOld):
		p.offset, p.done = p.total, true
	case len(act) == 1:
		p.offset = 0
	case len(act) == 2 && has(act[0], r.DigestNew) && has(act[1], r.DigestOld) && !act[0].Dynamic:
		p.offset = act[0].Size
	default:
		return nil, fmt.Errorf("%w: unexpected segments %+v", ErrInvalid, act)
	}
	if p.offset > p.total || p.offset%align != 0 {
		return nil, fmt.Errorf("%w: progress %d beyond data size %d", ErrInvalid, p.offset, p.total)
	}
	return p, nil
}

// newSeg is a segment with the new key from off (relative to the data start) of
// length n (0: dynamic).
func (p *plan) newSeg(off, n uint64) luks2.Segment {
	return p.seg(p.final, off, n, p.r.DigestNew)
}

// oldSeg is a segment with the old key from off to the end.
func (p *plan) oldSeg(off uint64) luks2.Segment {
	return p.seg(p.prev, off, 0, p.r.DigestOld)
}

func (p *plan) seg(base luks2.Segment, off, n uint64, digest int) luks2.Segment {
	return luks2.Segment{Type: "crypt", Offset: p.dataOffset + off, Size: n, Dynamic: n == 0,
		IVTweak: base.IVTweak + off/512, Encryption: base.Encryption, SectorSize: base.SectorSize, Digests: []int{digest}}
}

// hot returns the segments while the hotzone [off, off+n) is being rewritten
// (cryptsetup's reencrypt_make_hot_segments_forward): the re-encrypted part, the
// hotzone flagged in-reencryption and assigned to both digests, the rest.
func (p *plan) hot(off, n uint64) []luks2.Segment {
	var out []luks2.Segment
	if off > 0 {
		out = append(out, p.newSeg(0, off))
	}
	hz := p.newSeg(off, n)
	hz.Flags = []string{luks2.FlagInReencryption}
	hz.Digests = []int{p.r.DigestNew, p.r.DigestOld}
	out = append(out, hz)
	if off+n < p.total {
		out = append(out, p.oldSeg(off+n))
	}
	return out
}

// post returns the segments once the hotzone ending at end is written
// (reencrypt_make_post_segments_forward).
func (p *plan) post(end uint64) []luks2.Segment {
	if end >= p.total {
		return []luks2.Segment{p.newSeg(0, 0)}
	}
	return []luks2.Segment{p.newSeg(0, end), p.oldSeg(end)}
}
