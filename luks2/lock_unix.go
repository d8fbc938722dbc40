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
	dirfd, err := openLockDir(l.dir)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("L_%d:%d", unix.Major(rdev), unix.Minor(rdev))
	path := filepath.Join(l.dir, name)
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
		if err != nil {
			unix.Close(dirfd)
			return nil, fmt.Errorf("luks2: lock file %s: %w", path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			unix.Close(dirfd)
			return nil, fmt.Errorf("luks2: lock file %s is not a regular file", path)
		}
		if err := flockWait(ctx, fd, path); err != nil {
			unix.Close(fd)
			unix.Close(dirfd)
			return nil, err
		}
		if sameFileAt(fd, dirfd, name) {
			return func() {
				// Remove the file if it is still ours, then unlock, as cryptsetup does.
				if sameFileAt(fd, dirfd, name) {
					unix.Unlinkat(dirfd, name, 0)
				}
				unix.Flock(fd, unix.LOCK_UN)
				unix.Close(fd)
				unix.Close(dirfd)
			}, nil
		}
		// The previous holder removed the file after we opened it: retry.
		unix.Flock(fd, unix.LOCK_UN)
		unix.Close(fd)
	}
}

// openLockDir opens the lock directory without following a symlink (as cryptsetup
// does), creating it 0700 when it is missing.
func openLockDir(dir string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Open(dir, flags, 0)
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdir(dir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("luks2: lock directory %s: %w", dir, err)
		}
		fd, err = unix.Open(dir, flags, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("luks2: lock directory %s (must be a directory, not a symlink): %w", dir, err)
	}
	return fd, nil
}

// sameFileAt reports whether fd is still the file name in directory dirfd.
func sameFileAt(fd, dirfd int, name string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil || unix.Fstatat(dirfd, name, &b, unix.AT_SYMLINK_NOFOLLOW) != nil {
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
