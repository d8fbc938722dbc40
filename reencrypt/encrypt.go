package reencrypt

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/xts"
)

// shifter finishes cryptsetup's in-place encryption (`cryptsetup reencrypt
// --encrypt --reduce-device-size`): mode "encrypt", direction backward, resilience
// "datashift", the first data segment moved to the end of the device. Hotzones of
// the shift size are taken from the end: the plaintext at logical offset off is read
// from where it lies (the moved copy for off 0, else its original place) and
// written encrypted shift bytes further, at the new data offset plus off. Source and
// destination never overlap, and a hotzone's source is only overwritten by the next
// hotzone, after this one's post commit: after a crash the hotzone is simply
// rewritten from its source (cryptsetup's datashift recovery).
type shifter struct {
	v                  *luks2.Volume
	dev                device
	r                  *luks2.Reencryption
	prev, final, moved luks2.Segment
	shift, dataOffset  uint64
	total              uint64
	c                  *xts.Cipher
	o                  *Options
	start              time.Time
	resumed            uint64
	digestNew          int
}

func resumeEncrypt(ctx context.Context, v *luks2.Volume, dev device, passphrase []byte, r *luks2.Reencryption, o *Options) error {
	k := r.Keyslot
	s := &shifter{v: v, dev: dev, r: r, o: o, shift: k.ShiftSize, digestNew: r.DigestNew, start: time.Now()}
	var ok1, ok2, ok3 bool
	s.prev, ok1 = r.Backup(luks2.FlagBackupPrevious)
	s.final, ok2 = r.Backup(luks2.FlagBackupFinal)
	s.moved, ok3 = r.Backup(luks2.FlagBackupMoved)
	if k.Direction != "backward" || k.Resilience != "datashift" || !ok1 || !ok2 || !ok3 || r.DigestNew < 0 ||
		s.prev.Type != "linear" || s.moved.Type != "linear" || s.final.Type != "crypt" || !s.final.Dynamic ||
		s.moved.Size == 0 || s.moved.Size > s.shift || s.prev.Dynamic {
		return fmt.Errorf("%w: in-place encryption other than cryptsetup's --reduce-device-size layout (direction %s, resilience %s)",
			ErrUnsupported, k.Direction, k.Resilience)
	}
	s.dataOffset, s.total = s.final.Offset, s.prev.Size
	newVK, _, err := v.UnlockDigest(ctx, passphrase, r.DigestNew)
	if err != nil {
		return fmt.Errorf("reencrypt: new key: %w", err)
	}
	defer newVK.Wipe()
	if err := v.VerifyReencryptDigest(nil, newVK); err != nil {
		return err
	}
	if s.c, err = xts.New(newVK.Bytes()); err != nil {
		return err
	}
	defer s.c.Close()
	return s.run(ctx)
}

// linearLeft is the length of the data still in linear (plaintext) segments.
func linearLeft(act []luks2.Segment) uint64 {
	var n uint64
	for _, s := range act {
		if s.Type == "linear" {
			n += s.Size
		}
	}
	return n
}

func (s *shifter) report(done uint64, finished bool) {
	if s.o.Progress != nil {
		s.o.Progress(Progress{Done: int64(done), Total: int64(s.total), Resumed: int64(s.resumed), Elapsed: time.Since(s.start), Finished: finished})
	}
}

func (s *shifter) run(ctx context.Context) error {
	log := s.o.logger()
	first := true
	for {
		r, err := s.v.Reencryption()
		if err != nil {
			return err
		}
		act := r.Active()
		left := linearLeft(act)
		if left > s.total {
			return fmt.Errorf("%w: %d bytes in linear segments, more than the %d to encrypt", ErrInvalid, left, s.total)
		}
		if first {
			s.resumed, first = s.total-left, false
			s.report(s.total-left, false)
		}
		if r.Crashed() {
			idx := -1
			for i, sg := range act {
				if sg.HasFlag(luks2.FlagInReencryption) {
					idx = i
				}
			}
			hz := act[idx]
			if hz.Type != "crypt" || hz.Dynamic || hz.Offset < s.dataOffset {
				return fmt.Errorf("%w: hotzone segment %+v", ErrInvalid, hz)
			}
			off := hz.Offset - s.dataOffset
			log.Info("recovering interrupted hotzone", "offset", off, "length", hz.Size, "resilience", "datashift")
			if err := s.step(act, idx, off, hz.Size, false); err != nil {
				return err
			}
			continue
		}
		if left == 0 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (at %d of %d bytes)", ErrInterrupted, s.total-left, s.total)
		}
		// Where the next hotzone lies (cryptsetup's reencrypt_offset_backward_moved).
		var off, n uint64
		if len(act) == 1 {
			off, n = 0, s.shift
		} else {
			if left < s.shift {
				return fmt.Errorf("%w: %d plaintext bytes left, less than the shift", ErrInvalid, left)
			}
			tmp := left - s.shift
			if tmp > 0 && tmp < s.shift {
				off, n = s.shift, tmp
			} else {
				off, n = tmp, s.shift
			}
		}
		if off == 0 {
			n = s.moved.Size
		}
		hot, idx, err := s.hot(act, off, n)
		if err != nil {
			return err
		}
		if err := s.v.SetReencryptSegments(hot); err != nil {
			return err
		}
		if err := s.step(hot, idx, off, n, true); err != nil {
			return err
		}
		log.Debug("hotzone done", "offset", off, "length", n)
		s.report(s.total-linearLeft(hot)+n, false)
	}
	// Done: the moved copy holds plaintext of the first segment; overwrite it before
	// the metadata forgets where it is.
	if err := s.wipe(s.moved.Offset, s.moved.Size); err != nil {
		return err
	}
	if err := s.v.FinishReencrypt(ctx); err != nil {
		return err
	}
	s.report(s.total, true)
	log.Info("in-place encryption finished", "bytes", s.total, "elapsed", time.Since(s.start))
	return nil
}

// hot returns the segments while [off, off+n) is encrypted
// (reencrypt_make_hot_segments_encrypt_shift) and the hotzone's index.
func (s *shifter) hot(act []luks2.Segment, off, n uint64) ([]luks2.Segment, int, error) {
	sg := -1
	for i, x := range act {
		if x.Type == "linear" {
			sg = i
		}
	}
	if sg < 0 || act[sg].Size < n {
		return nil, 0, fmt.Errorf("%w: no linear segment holds the hotzone", ErrInvalid)
	}
	out := append([]luks2.Segment{}, act[:sg]...)
	if act[sg].Size > n {
		shrunk := act[sg]
		shrunk.Size -= n
		out = append(out, shrunk)
	}
	idx := len(out)
	out = append(out, luks2.Segment{Type: "crypt", Offset: s.dataOffset + off, Size: n, IVTweak: s.final.IVTweak + off/512,
		Encryption: s.final.Encryption, SectorSize: s.final.SectorSize, Flags: []string{luks2.FlagInReencryption}, Digests: []int{s.digestNew}})
	for _, x := range act {
		if x.Type == "crypt" {
			out = append(out, x)
			break
		}
	}
	return out, idx, nil
}

// post returns the segments once the hotzone at index idx of hot, [off, off+n), is
// written (_enc_create_segments_shift_after): it joins the encrypted segment after
// it, and becomes dynamic when it is the first.
func (s *shifter) post(hot []luks2.Segment, idx int, off, n uint64) []luks2.Segment {
	out := append([]luks2.Segment{}, hot[:idx]...)
	var seg luks2.Segment
	if idx+1 < len(hot) {
		seg = hot[idx+1]
		seg.Offset, seg.IVTweak, seg.Size = s.dataOffset+off, s.final.IVTweak+off/512, seg.Size+n
	} else {
		seg = hot[idx]
		seg.Size = n
	}
	seg.Flags, seg.Digests = nil, []int{s.digestNew}
	if idx == 0 {
		seg.Size, seg.Dynamic = 0, true
	}
	return append(out, seg)
}

// step encrypts the hotzone at index idx of hot from its source, syncs, and
// commits the post segments.
func (s *shifter) step(hot []luks2.Segment, idx int, off, n uint64, fresh bool) error {
	src := s.dataOffset + off - s.shift
	if idx == 0 {
		src = s.moved.Offset
	}
	if fresh && off > 0 {
		src = s.prev.Offset + off
	}
	ss := uint64(s.final.SectorSize)
	if n%ss != 0 || off%ss != 0 {
		return fmt.Errorf("%w: hotzone [%d, +%d) not aligned to %d-byte sectors", ErrInvalid, off, n, ss)
	}
	buf := make([]byte, min(n, chunk))
	defer clear(buf)
	for a := uint64(0); a < n; a += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), n-a)]
		if err := readFull(s.dev, b, int64(src+a)); err != nil {
			return fmt.Errorf("reencrypt: reading plaintext at %d: %w", src+a, err)
		}
		s.c.EncryptSectorsParallel(b, b, int(ss), s.final.IVTweak+(off+a)/512)
		if _, err := s.dev.WriteAt(b, int64(s.dataOffset+off+a)); err != nil {
			return fmt.Errorf("reencrypt: writing data at %d: %w", s.dataOffset+off+a, err)
		}
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("reencrypt: sync: %w", err)
	}
	return s.v.SetReencryptSegments(s.post(hot, idx, off, n))
}

// wipe overwrites [off, off+n) with random bytes and syncs.
func (s *shifter) wipe(off, n uint64) error {
	buf := make([]byte, min(n, 1<<20))
	for a := uint64(0); a < n; a += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), n-a)]
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("reencrypt: random: %w", err)
		}
		if _, err := s.dev.WriteAt(b, int64(off+a)); err != nil {
			return fmt.Errorf("reencrypt: wiping the moved segment at %d: %w", off+a, err)
		}
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("reencrypt: sync: %w", err)
	}
	return nil
}
