package reencrypt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/luks2"
)

// ErrOnlineMapping means the active mapping of a volume rotated online is not
// the one the metadata describes (not one crypt target over the whole data
// segment, or already split), or a table change failed.
var ErrOnlineMapping = errors.New("reencrypt: online: unexpected device-mapper table")

// Online names the active device-mapper mapping of a volume that Rotate or
// Resume re-encrypts while it is in use (mapped, mounted, written).
//
// Design: the simpler of the two ways cryptsetup's lib/luks2/luks2_reencrypt.c
// allows. cryptsetup keeps I/O flowing during a hotzone through an overlay
// device; here the mapping is suspended for the whole hotzone instead. For each
// hotzone [off, off+n): suspend the mapping (the kernel flushes the I/O in
// flight and freezes a mounted filesystem); drop the backing device's page
// cache, read and checksum the hotzone; run the offline steps unchanged
// (resilience data, hot commit, rewrite, post commit); load the table
// [0, off+n) crypt with the new key, [off+n, end) crypt with the old key;
// resume. Readers and writers of the mapping wait while a hotzone is
// rewritten (hotzones default to OnlineHotzone), never see a mix of keys. The
// metadata on disk is exactly what an offline run writes, so a run that dies
// midway is finished offline (Resume or cryptsetup) after the mapping is
// closed. The last hotzone also does the final metadata commit, then loads the
// single crypt target with the new key.
type Online struct {
	// Name is the mapping's name (/dev/mapper/NAME).
	Name string
	// Backing, when set, is the backing block device as opened for the run: its
	// page cache is dropped before every hotzone is read (dm-crypt writes below
	// it). Without it the device passed to Rotate is used when it is an
	// *os.File.
	Backing *os.File
}

// OnlineHotzone is the default hotzone of an online run: the mapping is
// suspended while one hotzone is rewritten, so it is kept small.
const OnlineHotzone = 4 << 20

// onlineTable is the live mapping's shape, without keys.
type onlineTable struct {
	base     blockdev.CryptTarget
	readOnly bool
}

// checkOnline reads the live table of the mapping and checks that it is the
// one the plan describes at offset off: a single crypt target with the old key
// (off 0) or the two targets of an earlier online run that stopped at off.
func (e *engine) checkOnline(ctx context.Context, off uint64) (*onlineTable, error) {
	m, err := blockdev.DMTable(ctx, e.o.Online.Name)
	if err != nil {
		return nil, err
	}
	if len(m.Targets) == 0 || m.Targets[0].Crypt == nil {
		return nil, fmt.Errorf("%w: %s has no crypt target", ErrOnlineMapping, e.o.Online.Name)
	}
	first := m.Targets[0].Crypt
	var length uint64
	for _, t := range m.Targets {
		if t.Crypt == nil || t.Start != length {
			return nil, fmt.Errorf("%w: %s is not crypt targets back to back", ErrOnlineMapping, e.o.Online.Name)
		}
		length += t.Length
	}
	want := 1
	if off > 0 && off < e.p.total {
		want = 2
	}
	switch {
	case len(m.Targets) != want:
		return nil, fmt.Errorf("%w: %s has %d targets, re-encryption at %d of %d bytes wants %d",
			ErrOnlineMapping, e.o.Online.Name, len(m.Targets), off, e.p.total, want)
	case first.Offset*blockdev.SectorSize != e.p.dataOffset || length*blockdev.SectorSize != e.p.total:
		return nil, fmt.Errorf("%w: %s covers %d bytes from %d, the data segment %d bytes from %d",
			ErrOnlineMapping, e.o.Online.Name, length*blockdev.SectorSize, first.Offset*blockdev.SectorSize, e.p.total, e.p.dataOffset)
	case first.Cipher != e.p.prev.Encryption || first.Cipher != e.p.final.Encryption:
		return nil, fmt.Errorf("%w: %s cipher %s", ErrOnlineMapping, e.o.Online.Name, first.Cipher)
	}
	if want == 2 && m.Targets[1].Start*blockdev.SectorSize != off {
		return nil, fmt.Errorf("%w: %s is split at %d, the metadata at %d", ErrOnlineMapping, e.o.Online.Name,
			m.Targets[1].Start*blockdev.SectorSize, off)
	}
	base := *first
	base.Key = nil
	return &onlineTable{base: base, readOnly: m.ReadOnly}, nil
}

// targets builds the table with the boundary at end: the new key before it,
// the old key after it.
func (e *engine) onlineTargets(t *onlineTable, end uint64, oldVK, newVK *luks2.VolumeKey) []*blockdev.CryptTarget {
	part := func(seg luks2.Segment, key []byte, a, b uint64) *blockdev.CryptTarget {
		c := t.base
		c.Start = a / blockdev.SectorSize
		c.Length = (b - a) / blockdev.SectorSize
		c.Offset = (e.p.dataOffset + a) / blockdev.SectorSize
		c.IVOffset = seg.IVTweak + a/blockdev.SectorSize
		c.SectorSize = uint32(seg.SectorSize)
		c.Key = key
		return &c
	}
	var out []*blockdev.CryptTarget
	if end > 0 {
		out = append(out, part(e.p.final, newVK.Bytes(), 0, end))
	}
	if end < e.p.total {
		out = append(out, part(e.p.prev, oldVK.Bytes(), end, e.p.total))
	}
	return out
}

// backing returns the file whose page cache is dropped before each read.
func (e *engine) backing() *os.File {
	if e.o.Online.Backing != nil {
		return e.o.Online.Backing
	}
	f, _ := e.dev.(*os.File)
	return f
}

// onlineLoop is loop for a mapped volume: one hotzone at a time, each with the
// mapping suspended (see Online).
func (e *engine) onlineLoop(ctx context.Context, oldVK, newVK *luks2.VolumeKey) error {
	name := e.o.Online.Name
	start := time.Now()
	resumed := e.p.offset
	hz := e.hotzoneLen()
	report := func(done uint64, finished bool) {
		if e.o.Progress != nil {
			e.o.Progress(Progress{Done: int64(done), Total: int64(e.p.total), Resumed: int64(resumed), Elapsed: time.Since(start), Finished: finished})
		}
	}
	off := e.p.offset
	if e.p.done {
		off = e.p.total
	}
	tbl, err := e.checkOnline(ctx, off)
	if err != nil {
		return err
	}
	report(off, false)
	buf := make([]byte, min(hz, e.p.total))
	// Once a hotzone is begun it is finished whatever ctx says: a cancelled ctx
	// must not leave the mapping suspended (or the final wipe half done).
	// Interruption is honoured between hotzones.
	zctx := context.WithoutCancel(ctx)
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (at %d of %d bytes)", ErrInterrupted, off, e.p.total)
		}
		n := min(hz, e.p.total-off)
		if err := blockdev.DMSuspend(zctx, name); err != nil {
			return fmt.Errorf("reencrypt: online: suspending %s: %w", name, err)
		}
		// Until the hot commit, a failure leaves the old table right: resume it.
		// After it, the mapping stays suspended: its table no longer matches the
		// data, and resuming it would hand out garbage (finish offline).
		committed, err := e.onlineZone(zctx, tbl, off, n, buf, oldVK, newVK)
		if err != nil && committed {
			return fmt.Errorf("%w; %s is left suspended: stop its users, then diskcryptd lock %s and finish offline with diskcryptd reencrypt --resume-only",
				err, name, name)
		}
		if rerr := blockdev.DMResume(ctx, name); rerr != nil {
			return errors.Join(err, fmt.Errorf("reencrypt: online: resuming %s: %w", name, rerr))
		}
		if err != nil {
			return err
		}
		off += n
		e.log.Debug("online hotzone done", "offset", off-n, "length", n)
		if off >= e.p.total {
			break
		}
		report(off, false)
	}
	report(e.p.total, true)
	e.log.Info("online re-encryption finished", "bytes", e.p.total, "mapping", name, "elapsed", time.Since(start))
	return nil
}

// onlineZone rewrites [off, off+n) while the mapping is suspended and loads the
// table with the boundary moved past it. committed reports whether the
// metadata may already say the hotzone is being rewritten.
func (e *engine) onlineZone(ctx context.Context, tbl *onlineTable, off, n uint64, buf []byte, oldVK, newVK *luks2.VolumeKey) (committed bool, err error) {
	end := off + n
	if n > 0 {
		if f := e.backing(); f != nil {
			if err := blockdev.FlushBuffers(f); err != nil {
				return false, err
			}
		}
		z := <-e.readZone(off, n, &buf)
		if z.err != nil {
			return false, z.err
		}
		if err := e.rewrite(ctx, z); err != nil {
			return true, err
		}
	}
	if end >= e.p.total {
		if err := e.v.FinishReencrypt(ctx); err != nil {
			return true, err
		}
	}
	if err := blockdev.DMReload(ctx, e.o.Online.Name, e.onlineTargets(tbl, end, oldVK, newVK), tbl.readOnly); err != nil {
		return true, fmt.Errorf("%w: loading the table split at %d: %w", ErrOnlineMapping, end, err)
	}
	return true, nil
}

// runOnline is run's end for a mapped volume: no mapped data path (the page
// cache of the backing device is bypassed by dm-crypt), no recovery while
// mapped, small hotzones.
func (e *engine) runOnline(ctx context.Context, r *luks2.Reencryption, oldVK, newVK *luks2.VolumeKey) error {
	if r.Crashed() {
		return fmt.Errorf("%w: the last run crashed mid-hotzone; close %s and resume offline (diskcryptd reencrypt --resume-only)",
			ErrOnlineMapping, e.o.Online.Name)
	}
	if e.o.HotzoneSize == 0 {
		o := *e.o
		o.HotzoneSize = OnlineHotzone
		e.o = &o
	}
	return e.onlineLoop(ctx, oldVK, newVK)
}
