package blockdev

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDMDir is where device-mapper nodes live.
const DefaultDMDir = "/dev/mapper"

// udevControl exists while systemd-udevd runs (libudev checks the same).
const udevControl = "/run/udev/control"

func devDir(d string) string {
	if d == "" {
		return DefaultDMDir
	}
	return d
}

// UdevRunning reports whether udev is running (so it will create device
// nodes and /dev/disk symlinks); in an initramfs without udev, or a minimal
// VM guest, it is not.
func UdevRunning() bool {
	_, err := os.Stat(udevControl)
	return err == nil
}

// isNodeFor reports whether path is (or links to) the block device dev.
func isNodeFor(path string, dev uint64) bool {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == dev
}

// ensureNode makes sure DIR/name is the block device dev: it waits for udev
// while udev runs (bounded by opts.NodeTimeout), then creates the node
// itself.
func ensureNode(ctx context.Context, name string, dev uint64, opts CreateOptions) (string, error) {
	path := filepath.Join(devDir(opts.DevDir), name)
	if isNodeFor(path, dev) {
		return path, nil
	}
	if UdevRunning() {
		timeout := opts.NodeTimeout
		if timeout <= 0 {
			timeout = 2 * time.Second
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		err := pollUntil(wctx, 20*time.Millisecond, func() bool { return isNodeFor(path, dev) })
		cancel()
		if err == nil {
			return path, nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("blockdev: waiting for %s: %w", path, ctx.Err())
		}
	}
	if err := MakeNode(path, dev); err != nil {
		return "", err
	}
	return path, nil
}

// MakeNode creates the block device node path for dev (mode 0600), creating
// its directory when needed. An existing node for the same device is left in
// place; anything else at path is replaced.
func MakeNode(path string, dev uint64) error {
	if isNodeFor(path, dev) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("blockdev: %w", err)
	}
	// Create under a temporary name and rename, so a racing udev symlink or
	// a stale node never leaves path missing or wrong.
	tmp := fmt.Sprintf("%s.diskcryptd-%d", path, os.Getpid())
	_ = os.Remove(tmp)
	if err := unix.Mknod(tmp, unix.S_IFBLK|0o600, int(dev)); err != nil {
		return fmt.Errorf("blockdev: mknod %s %s: %w", path, DevNumString(dev), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("blockdev: %w", err)
	}
	return nil
}

// removeOwnNode removes DIR/name when it is a plain node (not udev's
// symlink) for dev, i.e. one MakeNode created.
func removeOwnNode(dir, name string, dev uint64) {
	path := filepath.Join(dir, name)
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == dev {
		_ = os.Remove(path)
	}
}

// pollUntil calls cond every interval until it returns true (nil) or ctx
// is done (ctx.Err()).
func pollUntil(ctx context.Context, interval time.Duration, cond func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			if cond() {
				return nil
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}
