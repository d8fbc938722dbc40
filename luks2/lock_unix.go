//go:build unix

package luks2

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// flockLocker locks a device the way cryptsetup does (lib/utils_device_locking.c):
// a regular file (an image) is locked with flock on the file itself; a block device
// with flock on the lock file L_major:minor in dir, which is created if missing. A
// waiter that got the lock on a lock file another process unlinked meanwhile retries
// with a fresh file; the last holder removes the file on release if nobody waits.
type flockLocker struct {
	file *os.File // the device or image, opened by the Volume
	dir  string
}

func newLocker(f *os.File) deviceLocker {
	return &flockLocker{file: f, dir: DefaultLockDir}
}

func (l *flockLocker) lock(ctx context.Context) (func(), error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(l.file.Fd()), &st); err != nil {
		return nil, fmt.Errorf("luks2: lock: %w", err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fd := int(l.file.Fd())
		if err := flockWait(ctx, fd, l.file.Name()); err != nil {
			return nil, err
		}
		// Closing the file also releases the lock; Fd is then invalid (never a
		// reused descriptor number).
		return func() { unix.Flock(int(l.file.Fd()), unix.LOCK_UN) }, nil
	case unix.S_IFBLK:
		return l.lockBlock(ctx, uint64(st.Rdev))
	}
	return func() {}, nil
}

func (l *flockLocker) lockBlock(ctx context.Context, rdev uint64) (func(), error) {
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return nil, fmt.Errorf("luks2: lock directory: %w", err)
	}
	path := filepath.Join(l.dir, fmt.Sprintf("L_%d:%d", unix.Major(rdev), unix.Minor(rdev)))
	for {
		fd, err := unix.Open(path, unix.O_CREAT|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("luks2: lock file %s: %w", path, err)
		}
		if err := flockWait(ctx, fd, path); err != nil {
			unix.Close(fd)
			return nil, err
		}
		if sameFile(fd, path) {
			return func() {
				// Remove the file if it is still ours, then unlock, as cryptsetup does.
				if sameFile(fd, path) {
					unix.Unlink(path)
				}
				unix.Flock(fd, unix.LOCK_UN)
				unix.Close(fd)
			}, nil
		}
		// The previous holder removed the file after we opened it: retry.
		unix.Flock(fd, unix.LOCK_UN)
		unix.Close(fd)
	}
}

// sameFile reports whether fd is still the file at path.
func sameFile(fd int, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// flockWait takes an exclusive flock on fd, retrying until ctx ends.
func flockWait(ctx context.Context, fd int, what string) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("luks2: flock %s: %w", what, err)
		}
		t := time.NewTimer(lockPollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return lockTimeout(ctx, what)
		case <-t.C:
		}
	}
}
