package reencrypt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/diskcryptd/diskcryptd/blockdev/probe"
)

// ErrTailInUse means in-place encryption would overwrite data: the filesystem (or
// unknown content) reaches into the last bytes the LUKS2 header needs.
var ErrTailInUse = errors.New("reencrypt: the end of the device is in use")

// CheckTailFree reports whether the last reduce bytes of the size-byte device r are
// free, as in-place encryption (cryptsetup reencrypt --encrypt
// --reduce-device-size) needs: for ext2/3/4, xfs and btrfs the filesystem's own size
// (from its superblock) must end before them; a device with no signature must read
// as zeros there; anything else is refused. It returns a description of what it
// found, or an error wrapping ErrTailInUse. It only reads.
func CheckTailFree(r io.ReaderAt, size, reduce int64) (string, error) {
	if reduce <= 0 || reduce >= size {
		return "", fmt.Errorf("%w: reduce size %d of a %d-byte device", ErrTailInUse, reduce, size)
	}
	limit := size - reduce
	sig, err := probe.Probe(r, size)
	if err != nil {
		return "", err
	}
	if sig == nil {
		if err := zeros(r, limit, reduce); err != nil {
			return "", err
		}
		return "no signature, zeros at the end,", nil
	}
	fs, err := fsSize(r, sig.Type)
	if err != nil {
		return "", err
	}
	desc := fmt.Sprintf("%s of %d bytes", sig.Type, fs)
	if fs > limit {
		return "", fmt.Errorf("%w: %s reaches %d bytes into the last %d bytes", ErrTailInUse, desc, fs-limit, reduce)
	}
	return desc, nil
}

// fsSize returns the size in bytes a filesystem's superblock declares.
func fsSize(r io.ReaderAt, typ string) (int64, error) {
	var sb [4096]byte
	switch typ {
	case "ext2", "ext3", "ext4":
		// Superblock at 1024: s_blocks_count_lo at 4, s_log_block_size at 24,
		// s_feature_incompat at 96 (64bit = 0x80), s_blocks_count_hi at 336.
		if _, err := r.ReadAt(sb[:1024], 1024); err != nil {
			return 0, err
		}
		blocks := uint64(binary.LittleEndian.Uint32(sb[4:]))
		if binary.LittleEndian.Uint32(sb[96:])&0x80 != 0 {
			blocks |= uint64(binary.LittleEndian.Uint32(sb[336:])) << 32
		}
		logBS := binary.LittleEndian.Uint32(sb[24:])
		if logBS > 6 {
			return 0, fmt.Errorf("%w: ext block size 2^%d KiB", ErrTailInUse, logBS)
		}
		return checked(blocks, 1024<<logBS)
	case "xfs":
		// Superblock at 0, big-endian: sb_blocksize at 4, sb_dblocks at 8.
		if _, err := r.ReadAt(sb[:512], 0); err != nil {
			return 0, err
		}
		bs := binary.BigEndian.Uint32(sb[4:])
		if bs < 512 || bs > 65536 {
			return 0, fmt.Errorf("%w: xfs block size %d", ErrTailInUse, bs)
		}
		return checked(binary.BigEndian.Uint64(sb[8:]), uint64(bs))
	case "btrfs":
		// Superblock at 64 KiB: dev_item (at 0xc9) total_bytes at 0xc9+8, this
		// device's size.
		if _, err := r.ReadAt(sb[:], 64<<10); err != nil {
			return 0, err
		}
		return checked(binary.LittleEndian.Uint64(sb[0xc9+8:]), 1)
	}
	return 0, fmt.Errorf("%w: found %s, whose size is not known here", ErrTailInUse, typ)
}

func checked(n, unit uint64) (int64, error) {
	if unit == 0 || n > (1<<62)/unit {
		return 0, fmt.Errorf("%w: implausible filesystem size", ErrTailInUse)
	}
	return int64(n * unit), nil
}

// zeros checks that [off, off+n) reads as zeros.
func zeros(r io.ReaderAt, off, n int64) error {
	buf := make([]byte, 1<<20)
	var zero [1 << 20]byte
	for done := int64(0); done < n; {
		k := min(int64(len(buf)), n-done)
		if _, err := r.ReadAt(buf[:k], off+done); err != nil {
			return err
		}
		if !bytes.Equal(buf[:k], zero[:k]) {
			return fmt.Errorf("%w: no filesystem signature, but data at byte %d of the last %d bytes", ErrTailInUse, done, n)
		}
		done += k
	}
	return nil
}
