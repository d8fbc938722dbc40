package luks2

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"

	"github.com/diskcryptd/diskcryptd/blockdev/probe"
)

// Format defaults, as cryptsetup 2.6 writes LUKS2.
const (
	// DefaultKeySize is the volume key size in bits (AES-256-XTS).
	DefaultKeySize = 512
	// DefaultDataOffset is where the data segment starts (16 MiB).
	DefaultDataOffset = 16 << 20
	// DataCipher is the only data segment encryption written.
	DataCipher = "aes-xts-plain64"
)

// Persistent activation flags (config.flags, §3.9).
const (
	FlagAllowDiscards       = "allow-discards"
	FlagSameCPUCrypt        = "same-cpu-crypt"
	FlagSubmitFromCryptCPUs = "submit-from-crypt-cpus"
	FlagNoReadWorkqueue     = "no-read-workqueue"
	FlagNoWriteWorkqueue    = "no-write-workqueue"
)

var knownFlags = map[string]bool{
	FlagAllowDiscards: true, FlagSameCPUCrypt: true, FlagSubmitFromCryptCPUs: true,
	FlagNoReadWorkqueue: true, FlagNoWriteWorkqueue: true,
}

// FormatOptions choose what Format writes. The zero value (or nil) gives
// cryptsetup's defaults.
type FormatOptions struct {
	// KeySize is the volume key size in bits: 512 (default) or 256.
	KeySize int
	// SectorSize is the encryption sector size: 512 or 4096. 0 means 4096 when the
	// data offset and the data area size are multiples of 4096, else 512.
	SectorSize int
	// DataOffset is the data segment's start in bytes, a multiple of 4096; 0 means
	// DefaultDataOffset (16 MiB).
	DataOffset int64
	// HeaderSize is one header copy's size (16 KiB default; one of 16 KiB, 32 KiB,
	// …, 4 MiB). The keyslots area fills the rest up to DataOffset.
	HeaderSize int64
	// UUID is the volume UUID; empty means a random version 4 UUID.
	UUID string
	// Label and Subsystem go into the binary header (at most 47 bytes each).
	Label, Subsystem string
	// Flags are persistent activation flags (FlagAllowDiscards, ...).
	Flags []string
	// Keyslot chooses keyslot 0's KDF and priority.
	Keyslot KeyslotOptions
	// VolumeKey, when set, is used instead of a random key (it is copied).
	VolumeKey *VolumeKey
	// Force formats even when probe.Probe finds a LUKS header, a filesystem, swap
	// or a partition table. Without it Format fails with *ExistingSignatureError.
	Force bool

	// digestIterations overrides the digest's benchmarked iterations (tests).
	digestIterations int
}

// NewUUID returns a random (version 4) UUID in its canonical text form.
func NewUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", fmt.Errorf("luks2: random: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// Format writes a new LUKS2 volume on dev (size bytes) with one keyslot (0) that
// opens with passphrase, and returns it opened read-write together with its volume
// key (the caller wipes it). It refuses a device that already carries data unless
// opts.Force is set. Everything before the data offset is overwritten.
func Format(ctx context.Context, dev Device, size int64, passphrase []byte, opts *FormatOptions) (*Volume, *VolumeKey, error) {
	if opts == nil {
		opts = &FormatOptions{}
	}
	o := *opts
	if o.KeySize == 0 {
		o.KeySize = DefaultKeySize
	}
	if o.KeySize != 256 && o.KeySize != 512 {
		return nil, nil, fmt.Errorf("%w: key size %d bits (256 or 512)", ErrUnsupported, o.KeySize)
	}
	if o.VolumeKey != nil && o.VolumeKey.Len()*8 != o.KeySize {
		if opts.KeySize != 0 {
			return nil, nil, fmt.Errorf("%w: volume key has %d bits, key size %d", ErrUnsupported, o.VolumeKey.Len()*8, o.KeySize)
		}
		o.KeySize = o.VolumeKey.Len() * 8
		if o.KeySize != 256 && o.KeySize != 512 {
			return nil, nil, fmt.Errorf("%w: volume key of %d bits", ErrUnsupported, o.KeySize)
		}
	}
	if o.HeaderSize == 0 {
		o.HeaderSize = DefaultHeaderSize
	}
	if !validHeaderSize(uint64(o.HeaderSize)) {
		return nil, nil, fmt.Errorf("%w: header size %d", ErrUnsupported, o.HeaderSize)
	}
	if o.DataOffset == 0 {
		o.DataOffset = DefaultDataOffset
	}
	if o.DataOffset%4096 != 0 || o.DataOffset < 2*o.HeaderSize+4096 {
		return nil, nil, fmt.Errorf("%w: data offset %d", ErrUnsupported, o.DataOffset)
	}
	if size < o.DataOffset+512 {
		return nil, nil, fmt.Errorf("%w: %d bytes, need more than the %d-byte data offset", ErrDeviceTooSmall, size, o.DataOffset)
	}
	switch o.SectorSize {
	case 0:
		o.SectorSize = 512
		if (size-o.DataOffset)%4096 == 0 && size-o.DataOffset >= 4096 {
			o.SectorSize = 4096
		}
	case 512:
	case 4096:
		if (size-o.DataOffset)%4096 != 0 || size-o.DataOffset < 4096 {
			return nil, nil, fmt.Errorf("%w: data area of %d bytes is not a multiple of the 4096-byte sector size", ErrUnsupported, size-o.DataOffset)
		}
	default:
		return nil, nil, fmt.Errorf("%w: sector size %d (512 or 4096)", ErrUnsupported, o.SectorSize)
	}
	if size < o.DataOffset+int64(o.SectorSize) {
		return nil, nil, fmt.Errorf("%w: %d bytes", ErrDeviceTooSmall, size)
	}
	for _, f := range o.Flags {
		if !knownFlags[f] {
			return nil, nil, fmt.Errorf("%w: flag %q", ErrUnsupported, f)
		}
	}
	if o.UUID == "" {
		u, err := NewUUID()
		if err != nil {
			return nil, nil, err
		}
		o.UUID = u
	}
	bh := binHeader{hdrSize: o.HeaderSize, label: o.Label, subsystem: o.Subsystem, uuid: o.UUID, csumAlg: "sha256"}
	if _, err := encodeCopy(&bh, []byte("{}")); err != nil {
		return nil, nil, err
	}
	if !o.Force {
		sig, err := probe.Probe(dev, size)
		if err != nil {
			return nil, nil, fmt.Errorf("luks2: probing for existing data: %w", err)
		}
		if sig != nil {
			return nil, nil, &ExistingSignatureError{Kind: sig.Type, Desc: sig.String()}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}

	// Resolve the KDF before touching the disk (the benchmark may take seconds).
	kp, err := ResolveKDF(ctx, o.Keyslot.KDF)
	if err != nil {
		return nil, nil, err
	}
	ksOpts := &KeyslotOptions{Priority: o.Keyslot.Priority, KDF: kp.options()}

	var vk *VolumeKey
	if o.VolumeKey != nil {
		vk = NewVolumeKey(o.VolumeKey.Bytes())
	} else {
		kb := make([]byte, o.KeySize/8)
		if _, err := rand.Read(kb); err != nil {
			return nil, nil, fmt.Errorf("luks2: random: %w", err)
		}
		vk = &VolumeKey{b: kb}
	}
	ok := false
	defer func() {
		if !ok {
			vk.Wipe()
		}
	}()

	// Digest (§3.8).
	dIter := o.digestIterations
	if dIter == 0 && o.Keyslot.KDF.Iterations > 0 {
		// The caller fixed the KDF cost (no benchmark): like `cryptsetup luksFormat
		// --pbkdf-force-iterations`, which then writes a digest of the minimum 1000
		// iterations instead of benchmarking one (the digest guards a random key).
		dIter = MinPBKDF2Iterations
	}
	if dIter == 0 {
		if dIter, err = digestIterations(ctx, "sha256"); err != nil {
			return nil, nil, err
		}
	}
	dsalt := make([]byte, saltLen)
	if _, err := rand.Read(dsalt); err != nil {
		return nil, nil, fmt.Errorf("luks2: random: %w", err)
	}
	nh, _ := hashFunc("sha256")
	dsum := pbkdf2Key(nh, vk.Bytes(), dsalt, dIter, 32)
	dg := jsonDigest{Type: "pbkdf2", Keyslots: []string{}, Segments: []string{"0"}, Hash: "sha256", Iterations: dIter,
		Salt: base64.StdEncoding.EncodeToString(dsalt), Digest: base64.StdEncoding.EncodeToString(dsum)}
	zero := u64(0)
	sg := jsonSegment{Type: "crypt", Offset: u64(o.DataOffset), Size: "dynamic", IVTweak: &zero, Encryption: DataCipher, SectorSize: o.SectorSize}
	cfg := jsonConfig{JSONSize: u64(o.HeaderSize - binHeaderSize), KeyslotsSize: u64(o.DataOffset - 2*o.HeaderSize), Flags: o.Flags}
	js := fmt.Sprintf(`{"keyslots":{},"tokens":{},"segments":{"0":%s},"digests":{"0":%s},"config":%s}`, mustRaw(sg), mustRaw(dg), mustRaw(cfg))
	m, err := parseMetadata([]byte(js), o.HeaderSize)
	if err != nil {
		return nil, nil, fmt.Errorf("luks2: internal error building metadata: %w", err)
	}

	// Wipe the old metadata: zero both header areas, fill the keyslots area with
	// random data.
	if err := writeFull(dev, make([]byte, 2*o.HeaderSize), 0); err != nil {
		return nil, nil, fmt.Errorf("luks2: wiping header area: %w", err)
	}
	v := &Volume{dev: dev, size: size, mode: ReadWrite, meta: m, bin: bh, st: &headerState{}}
	if _, err := rand.Read(v.saltP[:]); err != nil {
		return nil, nil, err
	}
	if _, err := rand.Read(v.saltS[:]); err != nil {
		return nil, nil, err
	}
	if err := v.wipeArea(ctx, &keyslotEntry{ks: jsonKeyslot{Area: &jsonArea{Offset: u64(2 * o.HeaderSize), Size: cfg.KeyslotsSize}}}); err != nil {
		return nil, nil, err
	}
	n, _, err := v.prepareKeyslot(ctx, m, vk, passphrase, 0, ksOpts)
	if err != nil {
		return nil, nil, err
	}
	if err := v.commit(n, bh.label, bh.subsystem); err != nil {
		return nil, nil, err
	}
	ok = true
	return v, vk, nil
}

// FormatFile formats the block device or image file at path (see Format) and
// returns the volume, which owns the file, and its volume key.
//
// A block device is opened with O_EXCL, which Linux refuses (EBUSY) while the device
// is mounted, mapped or otherwise held open exclusively. The device's metadata lock
// (see Volume.LockMetadata) is held while formatting; Format waits for it until ctx
// ends (ErrDeviceLocked).
func FormatFile(ctx context.Context, path string, passphrase []byte, opts *FormatOptions) (*Volume, *VolumeKey, error) {
	extra := 0
	if isBlockDevice(path) {
		extra = os.O_EXCL
	}
	f, dev, size, err := openPathFlags(path, ReadWrite, extra)
	if err != nil {
		return nil, nil, err
	}
	locker := newLocker(f)
	if locker != nil {
		release, err := locker.lock(ctx)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		defer release()
	}
	v, vk, err := Format(ctx, dev, size, passphrase, opts)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	v.file = f
	v.locker = locker
	return v, vk, nil
}

var _ Device = (*os.File)(nil)
