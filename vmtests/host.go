package vmtests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/diskcryptd/diskcryptd/xts"
)

// Segment is the part of a LUKS2 "crypt" segment the host checks need (LUKS2 on-disk
// format, section 3.3).
type Segment struct {
	// Offset of the data in bytes from the start of the device.
	Offset int64
	// SectorSize is the encryption sector size in bytes.
	SectorSize int
	// IVTweak is the IV of the segment's first sector, in 512-byte units.
	IVTweak uint64
	// Encryption is the cipher spec, e.g. "aes-xts-plain64".
	Encryption string
}

// ReadSegment asks the host's cryptsetup for segment 0 of the LUKS2 image img.
func ReadSegment(ctx context.Context, img string) (*Segment, error) {
	out, err := exec.CommandContext(ctx, "cryptsetup", "luksDump", "--dump-json-metadata", img).Output()
	if err != nil {
		return nil, fmt.Errorf("cryptsetup luksDump --dump-json-metadata %s: %w", img, err)
	}
	var md struct {
		Segments map[string]struct {
			Type       string `json:"type"`
			Offset     string `json:"offset"`
			IVTweak    string `json:"iv_tweak"`
			Encryption string `json:"encryption"`
			SectorSize int    `json:"sector_size"`
		} `json:"segments"`
	}
	if err := json.Unmarshal(out, &md); err != nil {
		return nil, fmt.Errorf("LUKS2 metadata of %s: %w", img, err)
	}
	s, ok := md.Segments["0"]
	if !ok || s.Type != "crypt" {
		return nil, fmt.Errorf("%s: no crypt segment 0", img)
	}
	off, err1 := strconv.ParseInt(s.Offset, 10, 64)
	tw, err2 := strconv.ParseUint(s.IVTweak, 10, 64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("%s: segment 0 offset %q iv_tweak %q", img, s.Offset, s.IVTweak)
	}
	return &Segment{Offset: off, SectorSize: s.SectorSize, IVTweak: tw, Encryption: s.Encryption}, nil
}

// VolumeKey asks the host's cryptsetup for the volume key of img, unlocking a keyslot
// with the passphrase in keyFile. The key passes through a 0600 file in dir, never argv.
func VolumeKey(ctx context.Context, img, keyFile, dir string) ([]byte, error) {
	vk := filepath.Join(dir, "volume-key")
	defer os.Remove(vk)
	cmd := exec.CommandContext(ctx, "cryptsetup", "luksDump", "--batch-mode", "--dump-volume-key",
		"--volume-key-file", vk, "--key-file", keyFile, img)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cryptsetup luksDump --dump-volume-key %s: %w\n%s", img, err, out)
	}
	return os.ReadFile(vk)
}

// CryptRange encrypts (or decrypts) data in place as dm-crypt does for the bytes at
// offset off (relative to the data segment, a multiple of the sector size) of an
// aes-xts-plain64 segment: IVs count 512-byte units whatever the sector size.
func CryptRange(seg *Segment, key []byte, data []byte, off int64, encrypt bool) error {
	if seg.Encryption != "aes-xts-plain64" {
		return fmt.Errorf("cipher %s: only aes-xts-plain64 is checked", seg.Encryption)
	}
	if off%int64(seg.SectorSize) != 0 || len(data)%seg.SectorSize != 0 {
		return fmt.Errorf("range %d+%d is not whole %d-byte sectors", off, len(data), seg.SectorSize)
	}
	c, err := xts.New(key)
	if err != nil {
		return fmt.Errorf("xts: %w", err)
	}
	defer c.Close()
	sector := seg.IVTweak + uint64(off/512)
	if encrypt {
		c.EncryptSectors(data, data, seg.SectorSize, sector)
	} else {
		c.DecryptSectors(data, data, seg.SectorSize, sector)
	}
	return nil
}

// ReadAt reads n bytes at off of the file p.
func ReadAt(p string, off int64, n int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", p, off, err)
	}
	return buf, nil
}

// WriteAt writes data at off of the file p.
func WriteAt(p string, off int64, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return fmt.Errorf("write %s at %d: %w", p, off, err)
	}
	return f.Close()
}

// ScanFile reports, for each needle, whether it occurs anywhere in the file p. It
// reads in chunks that overlap by the longest needle.
func ScanFile(p string, needles ...[]byte) ([]bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	found := make([]bool, len(needles))
	buf := make([]byte, 4<<20+longest)
	keep := 0
	for {
		k, err := f.Read(buf[keep:])
		window := buf[:keep+k]
		for i, n := range needles {
			if !found[i] && len(n) > 0 && bytes.Contains(window, n) {
				found[i] = true
			}
		}
		if err != nil {
			break
		}
		keep = min(longest, len(window))
		copy(buf, window[len(window)-keep:])
	}
	return found, nil
}

// Recovery keys are eight groups of eight modhex characters (systemd-cryptenroll's
// format, which diskcryptd writes too).
const recoveryKeyPattern = `[cbdefghijklnrtuv]{8}(-[cbdefghijklnrtuv]{8}){7}`
