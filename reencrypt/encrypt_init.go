package reencrypt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/diskcryptd/diskcryptd/luks2"
)

// markerMagic starts the record Encrypt keeps in the free space just before the
// moved copy until a header copy is valid: "copying" (the start of the device is
// intact; copy it again) or "copied" with the copy's hash (the copy at the end of
// the device, not the start, which the header overwrites, holds the first shift
// bytes of the data). One 512-byte sector, written whole.
var markerMagic = []byte("DISKCRYPTD-INPLACE-ENCRYPT-v1\x00\x00\x00")

const (
	markerSize    = 512
	markerCopying = 1
	markerCopied  = 2
)

// EncryptOptions choose the new volume's format in Encrypt.
type EncryptOptions struct {
	// SectorSize is the encryption sector size: 512 (default, as cryptsetup) or 4096.
	SectorSize int
}

// Encrypt encrypts the data on dev (size bytes) in place, as `cryptsetup reencrypt
// --encrypt --reduce-device-size reduce` does, in cryptsetup's format: the first
// reduce/2 bytes move to the end of the device, a LUKS2 header (data offset
// reduce/2) takes their place, and the data, encrypted with a new random key
// (keyslot 0 for passphrase), ends up shifted by reduce/2 bytes. The data must end
// before the last reduce bytes: CheckTailFree is run first and a failure changes
// nothing. On a device where an in-place encryption is in progress, Encrypt resumes
// it. Each write is ordered so that a crash anywhere is finished by calling Encrypt
// (or Resume, or cryptsetup repair + reencrypt --resume-only once the header is
// written) again.
func Encrypt(ctx context.Context, dev luks2.Device, size, reduce int64, passphrase []byte, o *Options, eo *EncryptOptions) error {
	if o == nil {
		o = &Options{}
	}
	if eo == nil {
		eo = &EncryptOptions{}
	}
	ss := eo.SectorSize
	if ss == 0 {
		ss = 512
	}
	shift := reduce / 2
	if reduce <= 0 || reduce%8192 != 0 || shift < 1<<20 || size-reduce < shift || (size-reduce)%int64(ss) != 0 {
		return fmt.Errorf("%w: --reduce-device-size %d on a %d-byte device (a multiple of 8 KiB, at least 2 MiB, at most two thirds of the device)", ErrUnsupported, reduce, size)
	}
	// A LUKS2 header already there: an in-place encryption to resume, or a volume.
	if v, err := luks2.OpenDevice(dev, size, luks2.ReadOnly); err == nil {
		if r, err := v.Reencryption(); err == nil && r.Keyslot.Mode == "encrypt" {
			return Resume(ctx, dev, size, passphrase, o)
		}
		return fmt.Errorf("%w: the device already holds a LUKS2 volume", ErrUnsupported)
	}
	log := o.logger()
	movedAt := size - shift
	markerAt := movedAt - markerSize
	state, sum, err := readMarker(dev, markerAt, size, shift)
	if err != nil {
		return err
	}
	switch state {
	case markerCopied:
		got, err := hashRange(dev, movedAt, shift)
		if err != nil {
			return err
		}
		if got != sum {
			return fmt.Errorf("%w: the copy of the first %d bytes at the end of the device changed since it was made; restore it by hand", ErrInvalid, shift)
		}
		log.Info("resuming an interrupted start: the moved copy is intact")
	case markerCopying:
		log.Info("resuming an interrupted start: copying the first segment again")
	default:
		if _, err := CheckTailFree(dev, size, reduce); err != nil {
			return err
		}
		if err := writeMarker(dev, markerAt, size, shift, markerCopying, [32]byte{}); err != nil {
			return err
		}
	}
	if state != markerCopied {
		if sum, err = copyRange(dev, 0, movedAt, shift); err != nil {
			return err
		}
		if err := writeMarker(dev, markerAt, size, shift, markerCopied, sum); err != nil {
			return err
		}
	}
	hdr, err := buildInPlaceHeader(ctx, size, shift, ss, passphrase, o)
	if err != nil {
		return err
	}
	defer clear(hdr)
	// Keyslots area first, then the secondary copy, then the primary: when a copy
	// reads as valid, everything it refers to is on disk.
	h := int64(luks2.DefaultHeaderSize)
	for _, r := range [][2]int64{{2 * h, shift}, {h, 2 * h}, {0, h}} {
		if _, err := dev.WriteAt(hdr[r[0]:r[1]], r[0]); err != nil {
			return fmt.Errorf("reencrypt: writing the header at %d: %w", r[0], err)
		}
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("reencrypt: sync: %w", err)
		}
	}
	log.Info("in-place encryption initialized", "shift", shift, "data", size-reduce)
	return Resume(ctx, dev, size, passphrase, o)
}

// buildInPlaceHeader formats, in memory, the header of the in-place encryption and
// returns its first shift bytes (binary headers, JSON, keyslots area).
func buildInPlaceHeader(ctx context.Context, size, shift int64, ss int, passphrase []byte, o *Options) ([]byte, error) {
	mem := &memDevice{b: make([]byte, shift+4096)}
	fo := &luks2.FormatOptions{DataOffset: shift, SectorSize: ss, Keyslot: o.Keyslot, Force: true}
	v, vk, err := luks2.Format(ctx, mem, int64(len(mem.b)), passphrase, fo)
	if err != nil {
		return nil, err
	}
	defer vk.Wipe()
	if err := v.BeginInPlaceEncryption(size, shift, vk, 0); err != nil {
		return nil, err
	}
	return mem.b[:shift], nil
}

// memDevice is a luks2.Device in memory.
type memDevice struct{ b []byte }

func (m *memDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, errors.New("reencrypt: read beyond the in-memory header")
	}
	return copy(p, m.b[off:]), nil
}

func (m *memDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, errors.New("reencrypt: write beyond the in-memory header")
	}
	return copy(m.b[off:], p), nil
}

func (m *memDevice) Sync() error { return nil }

// copyRange copies [from, from+n) to [to, to+n) (not overlapping), syncs, and
// returns the sha256 of what it copied.
func copyRange(dev device, from, to, n int64) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, min(n, chunk))
	defer clear(buf)
	for a := int64(0); a < n; a += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), n-a)]
		if err := readFull(dev, b, from+a); err != nil {
			return [32]byte{}, fmt.Errorf("reencrypt: reading at %d: %w", from+a, err)
		}
		h.Write(b)
		if _, err := dev.WriteAt(b, to+a); err != nil {
			return [32]byte{}, fmt.Errorf("reencrypt: moving the first segment to %d: %w", to+a, err)
		}
	}
	if err := dev.Sync(); err != nil {
		return [32]byte{}, fmt.Errorf("reencrypt: sync: %w", err)
	}
	var s [32]byte
	h.Sum(s[:0])
	return s, nil
}

func hashRange(dev device, off, n int64) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, min(n, chunk))
	defer clear(buf)
	for a := int64(0); a < n; a += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), n-a)]
		if err := readFull(dev, b, off+a); err != nil {
			return [32]byte{}, fmt.Errorf("reencrypt: reading at %d: %w", off+a, err)
		}
		h.Write(b)
	}
	var s [32]byte
	h.Sum(s[:0])
	return s, nil
}

// marker: magic, device size, shift (big-endian), state, sha256 of the moved copy,
// sha256 of all that.
func encodeMarker(size, shift int64, state byte, sum [32]byte) []byte {
	b := make([]byte, markerSize)
	n := copy(b, markerMagic)
	binary.BigEndian.PutUint64(b[n:], uint64(size))
	binary.BigEndian.PutUint64(b[n+8:], uint64(shift))
	b[n+16] = state
	copy(b[n+17:], sum[:])
	self := sha256.Sum256(b[:n+49])
	copy(b[n+49:], self[:])
	return b
}

func writeMarker(dev device, at, size, shift int64, state byte, sum [32]byte) error {
	if _, err := dev.WriteAt(encodeMarker(size, shift, state, sum), at); err != nil {
		return fmt.Errorf("reencrypt: writing the start marker: %w", err)
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("reencrypt: sync: %w", err)
	}
	return nil
}

// readMarker returns the state (0: no valid marker for this size and shift) and
// the moved copy's hash.
func readMarker(dev device, at, size, shift int64) (byte, [32]byte, error) {
	b := make([]byte, markerSize)
	if err := readFull(dev, b, at); err != nil {
		return 0, [32]byte{}, fmt.Errorf("reencrypt: reading at %d: %w", at, err)
	}
	var sum [32]byte
	n := len(markerMagic)
	st := b[n+16]
	copy(sum[:], b[n+17:n+49])
	if (st != markerCopying && st != markerCopied) || !bytes.Equal(b, encodeMarker(size, shift, st, sum)) {
		return 0, sum, nil
	}
	return st, sum, nil
}
