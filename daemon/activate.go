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
	for _, t := range v.Metadata().Tokens {
		if t.Type == unlock.RecoveryTokenType {
			continue
		}
		raw, err := v.ExportToken(t.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, unlock.Token{ID: t.ID, Type: t.Type, Keyslots: t.Keyslots, JSON: raw})
	}
	return out, nil
}

// RecoverKey recovers v's volume key through its tokens, trying protectors in order
// with a deadline of tokenTimeout per token. It returns the key (the caller wipes it)
// and the report of every attempt; on failure the error wraps unlock.ErrLocked.
func RecoverKey(ctx context.Context, v *luks2.Volume, protectors []unlock.Protector, tokenTimeout time.Duration, log hclog.Logger) (*luks2.VolumeKey, *unlock.Report, error) {
	tokens, err := Tokens(v)
	if err != nil {
		return nil, nil, err
	}
	var vk *luks2.VolumeKey
	open := func(ctx context.Context, pass []byte, slots []int) error {
		var errs []error
		for _, s := range slots {
			k, err := v.UnlockKeyslot(ctx, s, pass)
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
}

// ErrNotBlockDevice is returned by Map for a path that is not a block device (an image
// file must be attached to a loop device first).
var ErrNotBlockDevice = errors.New("daemon: not a block device")

// Map creates the dm-crypt mapping /dev/mapper/NAME for v on device, loading the table
// cryptsetup would load (cipher, key, iv_tweak, offset, sector size, flags) and
// cryptsetup's dm UUID. The key exists in clear only in the ioctl buffer, which is
// wiped.
func Map(ctx context.Context, v *luks2.Volume, vk *luks2.VolumeKey, device, name string, opts MapOptions, log hclog.Logger) (*blockdev.Mapping, error) {
	ct, err := v.CryptTarget(vk)
	if err != nil {
		return nil, err
	}
	defer ct.Key.Wipe()
	dev, err := blockdev.Open(device, blockdev.OpenOptions{})
	if err != nil {
		return nil, err
	}
	devNum, isBlock := dev.DevNum(), dev.IsBlockDevice()
	dev.Close()
	if !isBlock {
		return nil, fmt.Errorf("%w: %s (attach an image with losetup first)", ErrNotBlockDevice, device)
	}
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
	m, err := blockdev.DMCreate(ctx, name, uuid, target, blockdev.CreateOptions{ReadOnly: opts.ReadOnly})
	if err != nil {
		return nil, err
	}
	log.Info("volume mapped", "device", device, "name", name, "node", m.Node)
	return m, nil
}
