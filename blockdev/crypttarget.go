package blockdev

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// CryptFlags are dm-crypt optional parameters
// (Documentation/admin-guide/device-mapper/dm-crypt.rst).
type CryptFlags uint32

// dm-crypt optional parameters. LUKS2 persistent flags map to them one to
// one ("allow-discards" → AllowDiscards, ...).
const (
	AllowDiscards       CryptFlags = 1 << iota // allow_discards
	SameCPUCrypt                               // same_cpu_crypt
	SubmitFromCryptCPUs                        // submit_from_crypt_cpus
	NoReadWorkqueue                            // no_read_workqueue
	NoWriteWorkqueue                           // no_write_workqueue
)

// cryptFlagNames lists the flags in the order cryptsetup writes them into a
// table (lib/libdevmapper.c, get_dm_crypt_params); sector_size follows them.
var cryptFlagNames = []struct {
	flag CryptFlags
	name string
}{
	{AllowDiscards, "allow_discards"},
	{SameCPUCrypt, "same_cpu_crypt"},
	{SubmitFromCryptCPUs, "submit_from_crypt_cpus"},
	{NoReadWorkqueue, "no_read_workqueue"},
	{NoWriteWorkqueue, "no_write_workqueue"},
}

// String lists the flags by their dm-crypt names, space separated.
func (f CryptFlags) String() string {
	var names []string
	for _, n := range cryptFlagNames {
		if f&n.flag != 0 {
			names = append(names, n.name)
		}
	}
	if rest := f &^ (AllowDiscards | SameCPUCrypt | SubmitFromCryptCPUs | NoReadWorkqueue | NoWriteWorkqueue); rest != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint32(rest)))
	}
	return strings.Join(names, " ")
}

// ParseCryptFlag maps a dm-crypt option name ("allow_discards") or a LUKS2
// persistent flag name ("allow-discards") to its flag.
func ParseCryptFlag(name string) (CryptFlags, error) {
	n := strings.ReplaceAll(name, "-", "_")
	for _, f := range cryptFlagNames {
		if f.name == n {
			return f.flag, nil
		}
	}
	return 0, fmt.Errorf("blockdev: unknown dm-crypt flag %q", name)
}

// SectorSize is the 512-byte unit that device-mapper tables count in.
const SectorSize = 512

// CryptTarget is one dm-crypt target line: what cryptsetup loads for a
// LUKS2 segment. Its String redacts the key; Params is the only way to the
// real table text and returns a buffer the caller must wipe.
type CryptTarget struct {
	// Start is the first 512-byte sector of the mapping covered (0).
	Start uint64
	// Length is the mapping's length in 512-byte sectors; with a 4096-byte
	// SectorSize it must be a multiple of 8.
	Length uint64
	// Cipher is the dm-crypt cipher spec, e.g. "aes-xts-plain64".
	Cipher string
	// Key is the volume key in binary. It is hex-encoded only into the
	// ioctl buffer, which is wiped after the call. The caller owns (and
	// wipes) Key.
	Key []byte
	// IVOffset is the IV (tweak) of the first sector, in 512-byte units
	// (a LUKS2 segment's iv_tweak; 0 for a new volume).
	IVOffset uint64
	// Device is the backing device as "major:minor" (see DevNumString) or
	// a path.
	Device string
	// Offset is where the data starts on Device, in 512-byte sectors (a
	// LUKS2 segment's offset / 512).
	Offset uint64
	// SectorSize is the encryption sector size in bytes: 512 (or 0) or a
	// power of two up to 4096. Other than 512 it adds sector_size:N.
	// iv_large_sectors is never set: LUKS2 counts IVs in 512-byte units.
	SectorSize uint32
	// Flags are the optional dm-crypt parameters.
	Flags CryptFlags
}

// Validate checks the target's fields without looking at the key's value.
func (t *CryptTarget) Validate() error {
	switch {
	case t.Cipher == "" || strings.ContainsAny(t.Cipher, " \t\n\x00"):
		return fmt.Errorf("blockdev: crypt target: bad cipher %q", t.Cipher)
	case len(t.Key) == 0:
		return errors.New("blockdev: crypt target: no key")
	case t.Device == "" || strings.ContainsAny(t.Device, " \t\n\x00"):
		return fmt.Errorf("blockdev: crypt target: bad device %q", t.Device)
	case t.Length == 0:
		return errors.New("blockdev: crypt target: zero length")
	}
	ss := t.sectorSize()
	if ss < 512 || ss > 4096 || ss&(ss-1) != 0 {
		return fmt.Errorf("blockdev: crypt target: bad sector size %d", ss)
	}
	if k := uint64(ss / SectorSize); t.Length%k != 0 || t.Offset%k != 0 || t.IVOffset%k != 0 {
		return fmt.Errorf("blockdev: crypt target: length %d, offset %d and iv offset %d must be multiples of %d sectors for sector size %d",
			t.Length, t.Offset, t.IVOffset, k, ss)
	}
	return nil
}

func (t *CryptTarget) sectorSize() uint32 {
	if t.SectorSize == 0 {
		return SectorSize
	}
	return t.SectorSize
}

// appendParams appends the params text with key (hex, or a placeholder
// when key is nil) in cryptsetup's layout:
//
//	<cipher> <key> <iv_offset> <device> <offset> [<#opts> <opts>...]
func (t *CryptTarget) appendParams(dst []byte, key []byte, placeholder string) []byte {
	dst = append(dst, t.Cipher...)
	dst = append(dst, ' ')
	if key != nil {
		n := len(dst)
		dst = append(dst, make([]byte, hex.EncodedLen(len(key)))...)
		hex.Encode(dst[n:], key)
	} else {
		dst = append(dst, placeholder...)
	}
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, t.IVOffset, 10)
	dst = append(dst, ' ')
	dst = append(dst, t.Device...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, t.Offset, 10)

	var opts []string
	for _, f := range cryptFlagNames {
		if t.Flags&f.flag != 0 {
			opts = append(opts, f.name)
		}
	}
	if ss := t.sectorSize(); ss != SectorSize {
		opts = append(opts, "sector_size:"+strconv.FormatUint(uint64(ss), 10))
	}
	if len(opts) > 0 {
		dst = append(dst, ' ')
		dst = strconv.AppendInt(dst, int64(len(opts)), 10)
		for _, o := range opts {
			dst = append(dst, ' ')
			dst = append(dst, o...)
		}
	}
	return dst
}

// Params returns the target's params text exactly as cryptsetup would load
// it, with the key in hex. The result holds the key: the caller must wipe it
// (clear(p)) and must never log it.
func (t *CryptTarget) Params() ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	// Size the buffer up front so append never leaves key copies behind.
	p := make([]byte, 0, len(t.Cipher)+2*len(t.Key)+len(t.Device)+256)
	return t.appendParams(p, t.Key, ""), nil
}

// redactedKey stands for the key in String and in tables read back.
const redactedKey = "<redacted>"

// String returns the table line "<start> <length> crypt <params>" with the
// key replaced by "<redacted>".
func (t CryptTarget) String() string {
	b := fmt.Appendf(nil, "%d %d crypt ", t.Start, t.Length)
	return string(t.appendParams(b, nil, redactedKey))
}

// GoString redacts the key as String does, so %#v is safe too.
func (t CryptTarget) GoString() string { return "blockdev.CryptTarget{" + t.String() + "}" }

// MarshalJSON refuses to serialize a target with its key.
func (t CryptTarget) MarshalJSON() ([]byte, error) {
	return nil, errors.New("blockdev: CryptTarget holds a key and does not serialize")
}

// DMUUID returns the device-mapper UUID cryptsetup gives a LUKS2 mapping:
// "CRYPT-LUKS2-<LUKS UUID without dashes>-<name>". luksUUID must be a
// UUID in its 8-4-4-4-12 form.
func DMUUID(luksUUID, name string) (string, error) {
	return dmUUIDFor("LUKS2", luksUUID, name)
}

func dmUUIDFor(typ, luksUUID, name string) (string, error) {
	if !isUUID(luksUUID) {
		return "", fmt.Errorf("blockdev: %q is not a UUID", luksUUID)
	}
	if name == "" {
		return "", errors.New("blockdev: empty mapping name")
	}
	u := "CRYPT-" + typ + "-" + strings.ToLower(strings.ReplaceAll(luksUUID, "-", "")) + "-" + name
	if len(u) >= dmUUIDLen {
		return "", fmt.Errorf("blockdev: dm UUID for mapping %q is longer than %d bytes", name, dmUUIDLen-1)
	}
	return u, nil
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

// ParseCryptParams parses a dm-crypt params string as the kernel reports it
// (dmsetup table) into a CryptTarget. The key field is never kept: Key is
// nil and the caller wipes params if it held one. Unknown optional
// parameters are an error.
func ParseCryptParams(params string) (*CryptTarget, error) {
	f := strings.Fields(params)
	if len(f) < 5 {
		return nil, fmt.Errorf("blockdev: crypt params: %d fields, want at least 5", len(f))
	}
	t := &CryptTarget{Cipher: f[0], Device: f[3], SectorSize: SectorSize}
	var err error
	if t.IVOffset, err = strconv.ParseUint(f[2], 10, 64); err != nil {
		return nil, fmt.Errorf("blockdev: crypt params: iv_offset: %w", err)
	}
	if t.Offset, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return nil, fmt.Errorf("blockdev: crypt params: offset: %w", err)
	}
	if len(f) == 5 {
		return t, nil
	}
	n, err := strconv.Atoi(f[5])
	if err != nil || n != len(f)-6 {
		return nil, fmt.Errorf("blockdev: crypt params: bad option count %q", f[5])
	}
	for _, o := range f[6:] {
		if v, ok := strings.CutPrefix(o, "sector_size:"); ok {
			ss, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("blockdev: crypt params: %s: %w", o, err)
			}
			t.SectorSize = uint32(ss)
			continue
		}
		fl, err := ParseCryptFlag(o)
		if err != nil || strings.Contains(o, "-") {
			return nil, fmt.Errorf("blockdev: crypt params: unsupported option %q", o)
		}
		t.Flags |= fl
	}
	return t, nil
}

// NewLUKS2Target builds the crypt target cryptsetup loads for a LUKS2 data
// segment of "dynamic" size on a device of deviceSize bytes: the mapping
// covers the device from segmentOffset (bytes) to its end, the IV of the
// first sector is ivTweak, and sectorSize is the segment's encryption sector
// size. Like cryptsetup it refuses a data area that is not a whole number
// of encryption sectors. key is referenced, not copied.
func NewLUKS2Target(device string, deviceSize, segmentOffset int64, cipher string, key []byte, ivTweak uint64, sectorSize uint32, flags CryptFlags) (*CryptTarget, error) {
	if sectorSize == 0 {
		sectorSize = SectorSize
	}
	if segmentOffset < 0 || segmentOffset%SectorSize != 0 {
		return nil, fmt.Errorf("blockdev: LUKS2 segment offset %d is not a multiple of 512", segmentOffset)
	}
	if deviceSize <= segmentOffset {
		return nil, fmt.Errorf("blockdev: device of %d bytes has no room for data at offset %d", deviceSize, segmentOffset)
	}
	data := deviceSize - segmentOffset
	if data%int64(sectorSize) != 0 {
		return nil, fmt.Errorf("blockdev: data area of %d bytes is not a multiple of the %d-byte sector size", data, sectorSize)
	}
	t := &CryptTarget{
		Length:     uint64(data / SectorSize),
		Cipher:     cipher,
		Key:        key,
		IVOffset:   ivTweak,
		Device:     device,
		Offset:     uint64(segmentOffset / SectorSize),
		SectorSize: sectorSize,
		Flags:      flags,
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}
