// Package daemon is diskcryptd's boot-time unlocker: it reads the volume list, finds
// each volume (also when it appears late), recovers its volume key through the
// volume's tokens with the configured protectors, maps it with dm-crypt, and reports
// every volume's state on a local socket and to systemd.
//
// The functions RecoverKey and Map are also what the "diskcryptd unlock" command uses,
// so a volume is opened the same way by hand and at boot.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/hashicorp/go-hclog"
)

// Tokens returns a volume's tokens in the form the unlock package takes, without the
// recovery-key tokens (those need a human at a prompt, not a protector).
func Tokens(v *luks2.Volume) ([]unlock.Token, error) {
	var out []unlock.Token
	md := v.Metadata()
	for _, t := range md.Tokens {
		if t.Type == unlock.RecoveryTokenType {
			continue
		}
		raw, err := v.ExportToken(t.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, unlock.Token{ID: t.ID, Type: t.Type, Keyslots: t.Keyslots, JSON: raw, VolumeUUID: md.UUID})
	}
	return out, nil
}

// RecoverKey recovers v's volume key through its tokens, trying protectors in order
// with a deadline of tokenTimeout per token. It returns the key (the caller wipes it)
// and the report of every attempt; on failure the error wraps unlock.ErrLocked.
func RecoverKey(ctx context.Context, v *luks2.Volume, protectors []unlock.Protector, tokenTimeout time.Duration, log hclog.Logger) (*luks2.VolumeKey, *unlock.Report, error) {
	return recoverKey(ctx, v, protectors, tokenTimeout, log, nil)
}

// recoverKey is RecoverKey; onKeyslot, if set, is told when each keyslot attempt (the
// KDF) started and ended.
func recoverKey(ctx context.Context, v *luks2.Volume, protectors []unlock.Protector, tokenTimeout time.Duration, log hclog.Logger, onKeyslot func(start, end time.Time)) (*luks2.VolumeKey, *unlock.Report, error) {
	tokens, err := Tokens(v)
	if err != nil {
		return nil, nil, err
	}
	var vk *luks2.VolumeKey
	open := func(ctx context.Context, pass []byte, slots []int) error {
		var errs []error
		for _, s := range slots {
			start := time.Now()
			k, err := v.UnlockKeyslot(ctx, s, pass)
			if onKeyslot != nil {
				onKeyslot(start, time.Now())
			}
			if err == nil {
				vk = k
				return nil
			}
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return fmt.Errorf("token is bound to no keyslot: %w", luks2.ErrNoKeyslotAccepts)
		}
		return errors.Join(errs...)
	}
	u := &unlock.Unlocker{Protectors: protectors, TokenTimeout: tokenTimeout, Logger: log}
	rep, err := u.Unlock(ctx, tokens, open)
	if err != nil {
		return nil, rep, err
	}
	return vk, rep, nil
}

// MapOptions are activation options beyond the volume's persistent flags.
type MapOptions struct {
	// ReadOnly maps the volume read-only.
	ReadOnly bool
	// Flags are added to the volume's persistent flags.
	Flags blockdev.CryptFlags
	// DM is the device-mapper to create the mapping in; nil means the kernel's.
	DM DeviceMapper
}

// DeviceMapper is the part of device-mapper the daemon uses. KernelDM is the real one;
// tests substitute an in-memory one.
type DeviceMapper interface {
	// Table returns the mapping name with its live table (keys redacted), or an error
	// matching blockdev.ErrMappingNotFound.
	Table(ctx context.Context, name string) (*blockdev.Mapping, error)
	// Create creates and activates a dm-crypt mapping.
	Create(ctx context.Context, name, dmUUID string, t *blockdev.CryptTarget, opts blockdev.CreateOptions) (*blockdev.Mapping, error)
	// Remove removes a mapping.
	Remove(ctx context.Context, name string, opts blockdev.RemoveOptions) error
}

// KernelDM is the kernel's device-mapper, through blockdev.
type KernelDM struct{}

// Table calls blockdev.DMTable.
func (KernelDM) Table(ctx context.Context, name string) (*blockdev.Mapping, error) {
	return blockdev.DMTable(ctx, name)
}

// Create calls blockdev.DMCreate.
func (KernelDM) Create(ctx context.Context, name, dmUUID string, t *blockdev.CryptTarget, opts blockdev.CreateOptions) (*blockdev.Mapping, error) {
	return blockdev.DMCreate(ctx, name, dmUUID, t, opts)
}

// Remove calls blockdev.DMRemove.
func (KernelDM) Remove(ctx context.Context, name string, opts blockdev.RemoveOptions) error {
	return blockdev.DMRemove(ctx, name, opts)
}

var _ DeviceMapper = KernelDM{}

// ErrNotBlockDevice is returned by Map for a path that is not a block device (an image
// file must be attached to a loop device first).
var ErrNotBlockDevice = errors.New("daemon: not a block device")

// Map opens device and maps v on it with MapDevice. Prefer MapDevice with the device v
// was read from, so that the mapped device is the one whose header was checked.
func Map(ctx context.Context, v *luks2.Volume, vk *luks2.VolumeKey, device, name string, opts MapOptions, log hclog.Logger) (*blockdev.Mapping, error) {
	dev, err := blockdev.Open(device, blockdev.OpenOptions{})
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	return MapDevice(ctx, v, vk, dev, name, opts, log)
}

// MapDevice creates the dm-crypt mapping /dev/mapper/NAME for v on the open device dev,
// loading the table cryptsetup would load (cipher, key, iv_tweak, offset, sector size,
// flags) and cryptsetup's dm UUID. The table names dev by the device number of the
// open descriptor, never by a path that could since point elsewhere. The key exists in
// clear only in the ioctl buffer, which is wiped.
func MapDevice(ctx context.Context, v *luks2.Volume, vk *luks2.VolumeKey, dev *blockdev.Device, name string, opts MapOptions, log hclog.Logger) (*blockdev.Mapping, error) {
	device := dev.Path()
	devNum, isBlock := dev.DevNum(), dev.IsBlockDevice()
	if !isBlock {
		return nil, fmt.Errorf("%w: %s (attach an image with losetup first)", ErrNotBlockDevice, device)
	}
	ct, err := v.CryptTarget(vk)
	if err != nil {
		return nil, err
	}
	defer ct.Key.Wipe()
	flags := opts.Flags
	for _, f := range ct.Flags {
		fl, err := blockdev.ParseCryptFlag(f)
		if err != nil {
			log.Warn("ignoring unknown persistent flag", "flag", f)
			continue
		}
		flags |= fl
	}
	key := ct.Key.Bytes()
	defer clear(key)
	target := &blockdev.CryptTarget{
		Length:     uint64(ct.Size) / blockdev.SectorSize,
		Cipher:     ct.Cipher,
		Key:        key,
		IVOffset:   ct.IVOffset,
		Device:     blockdev.DevNumString(devNum),
		Offset:     uint64(ct.Offset) / blockdev.SectorSize,
		SectorSize: uint32(ct.SectorSize),
		Flags:      flags,
	}
	uuid, err := blockdev.DMUUID(v.Metadata().UUID, name)
	if err != nil {
		return nil, err
	}
	dm := opts.DM
	if dm == nil {
		dm = KernelDM{}
	}
	m, err := dm.Create(ctx, name, uuid, target, blockdev.CreateOptions{ReadOnly: opts.ReadOnly})
	if err != nil {
		return nil, err
	}
	log.Info("volume mapped", "device", device, "name", name, "node", m.Node)
	return m, nil
}
