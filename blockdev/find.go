package blockdev

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrDeviceNotFound is matched (errors.Is) when no device matches a spec.
var ErrDeviceNotFound = errors.New("device not found")

// Finder locates block devices by path, filesystem or LUKS UUID, or GPT
// partition label, with or without udev. The zero value uses /dev and /sys.
type Finder struct {
	// DevDir is the device directory, "/dev" by default.
	DevDir string
	// SysDir is sysfs, "/sys" by default.
	SysDir string
	// Interval is the polling interval of Wait, 100 ms by default.
	Interval time.Duration
}

func (f *Finder) devDir() string {
	if f == nil || f.DevDir == "" {
		return "/dev"
	}
	return f.DevDir
}

func (f *Finder) sysDir() string {
	if f == nil || f.SysDir == "" {
		return "/sys"
	}
	return f.SysDir
}

// Spec kinds accepted by Find and Wait.
const (
	specUUID      = "UUID="
	specPartLabel = "PARTLABEL="
)

// Find resolves spec once: "UUID=<uuid>" (a LUKS or filesystem UUID),
// "PARTLABEL=<GPT partition name>", or a path (which must exist). It uses
// /dev/disk/by-uuid and /dev/disk/by-partlabel where udev made them, and
// otherwise scans /sys/class/block: by probing each device's signature for
// a UUID, and by the kernel's PARTNAME for a partition label. It fails
// with ErrDeviceNotFound when nothing matches.
func (f *Finder) Find(spec string) (string, error) {
	switch {
	case strings.HasPrefix(spec, specUUID):
		return f.FindByUUID(strings.TrimPrefix(spec, specUUID))
	case strings.HasPrefix(spec, specPartLabel):
		return f.FindByPartLabel(strings.TrimPrefix(spec, specPartLabel))
	}
	if _, err := os.Stat(spec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("blockdev: %s: %w", spec, ErrDeviceNotFound)
		}
		return "", fmt.Errorf("blockdev: %w", err)
	}
	return spec, nil
}

// Wait polls Find until spec resolves or ctx is done; then the error
// matches both ErrDeviceNotFound and ctx.Err().
func (f *Finder) Wait(ctx context.Context, spec string) (string, error) {
	interval := 100 * time.Millisecond
	if f != nil && f.Interval > 0 {
		interval = f.Interval
	}
	var path string
	var lastErr error
	err := pollUntil(ctx, interval, func() bool {
		path, lastErr = f.Find(spec)
		return lastErr == nil
	})
	if err != nil {
		if lastErr != nil && !errors.Is(lastErr, ErrDeviceNotFound) {
			return "", fmt.Errorf("blockdev: waiting for %s: %w (last error: %w)", spec, err, lastErr)
		}
		return "", fmt.Errorf("blockdev: waiting for %s: %w: %w", spec, ErrDeviceNotFound, err)
	}
	return path, nil
}

// WaitPath waits until path exists or ctx is done.
func WaitPath(ctx context.Context, path string) error {
	_, err := (&Finder{Interval: 50 * time.Millisecond}).Wait(ctx, path)
	return err
}

// FindByUUID returns the device whose LUKS header or filesystem carries
// uuid (case-insensitive): /dev/disk/by-uuid/UUID when it exists, else the
// first device in /sys/class/block whose probed signature has that UUID.
func (f *Finder) FindByUUID(uuid string) (string, error) {
	return f.findByUUID(uuid, false)
}

// FindByLUKSUUID is FindByUUID restricted to LUKS headers: a filesystem
// that happens to carry the same UUID never matches. Without udev's
// /dev/disk/by-uuid it probes the LUKS header of each device in
// /sys/class/block.
func (f *Finder) FindByLUKSUUID(uuid string) (string, error) {
	return f.findByUUID(uuid, true)
}

func (f *Finder) findByUUID(uuid string, luksOnly bool) (string, error) {
	if uuid == "" || strings.ContainsAny(uuid, "/\x00") {
		return "", fmt.Errorf("blockdev: invalid UUID %q", uuid)
	}
	for _, u := range []string{uuid, strings.ToLower(uuid)} {
		p := filepath.Join(f.devDir(), "disk", "by-uuid", u)
		if !exists(p) {
			continue
		}
		if !luksOnly {
			return p, nil
		}
		if sigs, err := probePath(p); err == nil {
			for _, s := range sigs {
				if s.Usage == UsageCrypto && strings.EqualFold(s.UUID, uuid) {
					return p, nil
				}
			}
		}
	}
	devs, err := f.blockDevices()
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		if d.size == 0 {
			continue
		}
		sigs, err := probePath(d.node)
		if err != nil {
			continue // unreadable (e.g. an empty drive): not ours
		}
		for _, s := range sigs {
			if s.UUID != "" && strings.EqualFold(s.UUID, uuid) && (!luksOnly || s.Usage == UsageCrypto) {
				return d.node, nil
			}
		}
	}
	return "", fmt.Errorf("blockdev: UUID=%s: %w", uuid, ErrDeviceNotFound)
}

// FindByPartLabel returns the GPT partition named label:
// /dev/disk/by-partlabel/LABEL when it exists, else the partition whose
// PARTNAME (in /sys/class/block/*/uevent) equals label.
func (f *Finder) FindByPartLabel(label string) (string, error) {
	if label == "" || strings.ContainsAny(label, "\x00") {
		return "", fmt.Errorf("blockdev: invalid partition label %q", label)
	}
	if !strings.Contains(label, "/") {
		if p := filepath.Join(f.devDir(), "disk", "by-partlabel", label); exists(p) {
			return p, nil
		}
	}
	devs, err := f.blockDevices()
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		if d.partName == label {
			return d.node, nil
		}
	}
	return "", fmt.Errorf("blockdev: PARTLABEL=%s: %w", label, ErrDeviceNotFound)
}

type sysBlock struct {
	name     string
	node     string
	size     int64 // 512-byte sectors
	partName string
}

// blockDevices lists /sys/class/block with each device's node, size and
// partition name.
func (f *Finder) blockDevices() ([]sysBlock, error) {
	dir := filepath.Join(f.sysDir(), "class", "block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("blockdev: list block devices: %w", err)
	}
	var out []sysBlock
	for _, e := range ents {
		d := sysBlock{name: e.Name(), node: filepath.Join(f.devDir(), e.Name())}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "size")); err == nil {
			fmt.Sscan(strings.TrimSpace(string(b)), &d.size)
		}
		if uf, err := os.Open(filepath.Join(dir, e.Name(), "uevent")); err == nil {
			sc := bufio.NewScanner(uf)
			for sc.Scan() {
				k, v, _ := strings.Cut(sc.Text(), "=")
				switch k {
				case "DEVNAME":
					// DEVNAME may contain a subdirectory (e.g. "mapper/x" is
					// not used, but "nvme/..." style names are possible).
					d.node = filepath.Join(f.devDir(), v)
				case "PARTNAME":
					d.partName = v
				}
			}
			uf.Close()
		}
		out = append(out, d)
	}
	return out, nil
}

func probePath(path string) ([]*Signature, error) {
	d, err := Open(path, OpenOptions{})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return ProbeAll(d, d.Size())
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
