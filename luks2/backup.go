package luks2

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
)

// areasSize is the size of the metadata: two header copies and the keyslots area.
func (v *Volume) areasSize() int64 {
	return 2*v.bin.hdrSize + int64(v.meta.config.KeyslotsSize)
}

// Backup writes a header backup to w: everything from offset 0 to the end of the
// keyslots area (the data offset on volumes we and cryptsetup format), like `cryptsetup
// luksHeaderBackup`. Both header copies in the backup are the current valid state,
// even if one copy on the device is damaged. The backup contains the keyslots: treat
// it like the device.
func (v *Volume) Backup(w io.Writer) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	js := v.meta.encode()
	_, _, pb, sb, err := v.encodeCopies(v.bin, js)
	if err != nil {
		return err
	}
	if _, err := w.Write(pb); err != nil {
		return fmt.Errorf("luks2: writing backup: %w", err)
	}
	if _, err := w.Write(sb); err != nil {
		return fmt.Errorf("luks2: writing backup: %w", err)
	}
	buf := make([]byte, 1<<20)
	off, end := 2*v.bin.hdrSize, v.areasSize()
	for off < end {
		n := min(int64(len(buf)), end-off)
		if err := readFull(v.dev, buf[:n], off); err != nil {
			return fmt.Errorf("luks2: reading keyslots area: %w", err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return fmt.Errorf("luks2: writing backup: %w", err)
		}
		off += n
	}
	return nil
}

// BackupFile writes a header backup to a new file at path (mode 0600); it refuses to
// overwrite an existing file.
func (v *Volume) BackupFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("luks2: %w", err)
	}
	if err := v.Backup(f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("luks2: %w", err)
	}
	return f.Close()
}

// RestoreHeader writes the header backup in backup (backupSize bytes, as written by
// Backup or `cryptsetup luksHeaderBackup`) onto dev (size bytes). The backup is
// validated first; its data segment must start within the device and, when dev
// already carries a valid LUKS2 header, at the same offset and with the same
// header and keyslots-area sizes (as cryptsetup's luksHeaderRestore requires).
// Whatever keyslots dev had are lost.
//
// A crash leaves the volume opening with the device's old passphrases or with the
// backup's: the backup's keyslot areas that the device's header does not use are
// written first; then, only if the two headers' keyslots share an area with
// different contents (which no ordering can make safe), those areas; then the
// primary copy and the secondary, at a seqid above both the device's and the
// backup's, so that the first complete new copy wins; last, the rest of the
// keyslots area, which destroys the old keyslots. Each step is synced.
func RestoreHeader(dev Device, size int64, backup io.ReaderAt, backupSize int64) error {
	bv, err := OpenDevice(readOnlyAt{backup}, backupSize, ReadOnly)
	if err != nil {
		return fmt.Errorf("luks2: header backup: %w", err)
	}
	areas := bv.areasSize()
	if backupSize < areas {
		return fmt.Errorf("%w: header backup is %d bytes, metadata needs %d", ErrInvalidMetadata, backupSize, areas)
	}
	if areas > size {
		return fmt.Errorf("%w: header backup needs %d bytes, device has %d", ErrDeviceTooSmall, areas, size)
	}
	_, bseg := bv.meta.dataSegment()
	if bseg != nil && int64(bseg.sg.Offset) >= size {
		return fmt.Errorf("%w: backup's data offset %d is beyond the device size %d", ErrDeviceTooSmall, bseg.sg.Offset, size)
	}
	seq := bv.bin.seqid
	// The device's own header, if it has a valid one: its live keyslot areas are
	// left alone until the backup's header is on disk.
	var live [][2]int64
	if cur, err := readHeaders(dev); err == nil {
		if err := restoreCompatible(cur.best, bv); err != nil {
			return err
		}
		for _, c := range []*headerCopy{cur.primary, cur.secondary} {
			if c == nil {
				continue
			}
			seq = max(seq, c.bin.seqid)
			for _, e := range c.meta.keyslots {
				live = append(live, [2]int64{int64(e.ks.Area.Offset), int64(e.ks.Area.Offset + e.ks.Area.Size)})
			}
		}
	}
	var used [][2]int64
	for _, e := range bv.meta.keyslots {
		used = append(used, [2]int64{int64(e.ks.Area.Offset), int64(e.ks.Area.Offset + e.ks.Area.Size)})
	}
	overlaps := func(rs [][2]int64, a, b int64) bool {
		for _, r := range rs {
			if a < r[1] && r[0] < b {
				return true
			}
		}
		return false
	}
	const block = 4096
	const maxRun = 1 << 20
	want := make([]byte, block)
	have := make([]byte, block)
	run := make([]byte, 0, maxRun)
	defer func() { wipe(want); wipe(have); wipe(run[:cap(run)]) }()
	// pass writes every block of the keyslots area that differs on dev and for
	// which pick is true, contiguous blocks in one write of up to maxRun bytes,
	// then syncs.
	pass := func(pick func(a, b int64) bool) error {
		var runAt int64
		flush := func() error {
			if len(run) > 0 {
				if err := writeFull(dev, run, runAt); err != nil {
					return fmt.Errorf("luks2: writing keyslots area: %w", err)
				}
			}
			run = run[:0]
			return nil
		}
		for off := 2 * bv.bin.hdrSize; off < areas; off += block {
			n := min(block, areas-off)
			skip := !pick(off, off+n)
			if !skip {
				if err := readFull(backup, want[:n], off); err != nil {
					return fmt.Errorf("luks2: reading header backup: %w", err)
				}
				err := readFull(dev, have[:n], off)
				skip = err == nil && bytes.Equal(want[:n], have[:n])
			}
			if skip || len(run)+int(n) > maxRun || (len(run) > 0 && runAt+int64(len(run)) != off) {
				if err := flush(); err != nil {
					return err
				}
			}
			if !skip {
				if len(run) == 0 {
					runAt = off
				}
				run = append(run, want[:n]...)
			}
		}
		if err := flush(); err != nil {
			return err
		}
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("luks2: sync: %w", err)
		}
		return nil
	}
	if err := pass(func(a, b int64) bool { return overlaps(used, a, b) && !overlaps(live, a, b) }); err != nil {
		return err
	}
	if err := pass(func(a, b int64) bool { return overlaps(used, a, b) && overlaps(live, a, b) }); err != nil {
		return err
	}
	js := bv.meta.encode()
	for _, secondary := range []bool{false, true} {
		h := bv.bin
		h.seqid = seq + 1
		h.secondary = secondary
		h.hdrOffset = 0
		h.salt = bv.saltP
		if secondary {
			h.hdrOffset, h.salt = h.hdrSize, bv.saltS
		}
		b, err := encodeCopy(&h, js)
		if err != nil {
			return err
		}
		if err := writeFull(dev, b, h.hdrOffset); err != nil {
			return fmt.Errorf("luks2: writing header: %w", err)
		}
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("luks2: sync: %w", err)
		}
	}
	return pass(func(a, b int64) bool { return !overlaps(used, a, b) })
}

// restoreCompatible refuses, as cryptsetup does, a backup whose data offset or
// metadata size differs from the header on the device (unless the device is in the
// middle of a re-encryption, whose header cryptsetup does not compare either).
func restoreCompatible(cur *headerCopy, bv *Volume) error {
	if r := cur.meta.config.Requirements; r != nil && len(r.Mandatory) > 0 {
		return nil
	}
	_, cs := cur.meta.dataSegment()
	_, bs := bv.meta.dataSegment()
	if cs != nil && bs != nil && cs.sg.Offset != bs.sg.Offset {
		return fmt.Errorf("%w: data offset differs on device (%d) and backup (%d)", ErrInvalidMetadata, cs.sg.Offset, bs.sg.Offset)
	}
	if cur.bin.hdrSize != bv.bin.hdrSize || cur.meta.config.KeyslotsSize != bv.meta.config.KeyslotsSize {
		return fmt.Errorf("%w: header and keyslots area sizes differ on device and backup", ErrInvalidMetadata)
	}
	return nil
}

// RestoreHeaderFile restores the backup file at backupPath onto the device or image
// at devicePath (see RestoreHeader), holding the device's metadata lock (the one
// cryptsetup takes) throughout.
func RestoreHeaderFile(devicePath, backupPath string) error {
	bf, err := os.Open(backupPath)
	if err != nil {
		return fmt.Errorf("luks2: %w", err)
	}
	defer bf.Close()
	bsize, err := bf.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("luks2: %w", err)
	}
	f, dev, size, err := openPath(devicePath, ReadWrite)
	if err != nil {
		return err
	}
	if l := newLocker(f); l != nil {
		release, err := l.lock(context.Background())
		if err != nil {
			f.Close()
			return err
		}
		defer release()
	}
	if err := RestoreHeader(dev, size, bf, bsize); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type readOnlyAt struct{ io.ReaderAt }

func (readOnlyAt) WriteAt([]byte, int64) (int, error) { return 0, ErrReadOnly }
func (readOnlyAt) Sync() error                        { return nil }

// Repair rewrites a damaged or stale header copy from the valid copy with the highest
// seqid (both copies are written at the next seqid, the damaged one first). It does
// nothing when both copies are valid and current.
func (v *Volume) Repair() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mode != ReadWrite {
		return ErrReadOnly
	}
	release, _, err := v.lockForWrite(context.Background())
	if err != nil {
		return err
	}
	defer release()
	p, s := v.st.primary, v.st.secondary
	if p != nil && s != nil && p.bin.seqid == s.bin.seqid && string(p.json) == string(s.json) {
		return nil
	}
	return v.commit(v.meta.clone(), v.bin.label, v.bin.subsystem)
}

// Erase destroys every keyslot: the whole keyslots area is overwritten with random
// data and synced, then the keyslots are dropped from the metadata (tokens stay,
// bound to no keyslot). Afterwards no passphrase or token can recover the volume key
// and the data is unreadable.
func (v *Volume) Erase(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	release, err := v.beginWrite(ctx)
	if err != nil {
		return err
	}
	defer release()
	area := &keyslotEntry{ks: jsonKeyslot{Area: &jsonArea{Offset: u64(2 * v.bin.hdrSize), Size: v.meta.config.KeyslotsSize}}}
	if err := v.wipeArea(ctx, area); err != nil {
		return err
	}
	drop := map[int]bool{}
	for id := range v.meta.keyslots {
		drop[id] = true
	}
	n, err := v.meta.withoutKeyslots(drop)
	if err != nil {
		return err
	}
	return v.commit(n, v.bin.label, v.bin.subsystem)
}
