package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Default sector sizes reported for regular image files.
const (
	FileLogicalSectorSize  = 512
	FilePhysicalSectorSize = 4096
)

// ErrBusy is matched (errors.Is) when a device is in use: an exclusive open
// of a mounted or mapped block device, a locked image file, or a
// device-mapper device that is still open.
var ErrBusy = errors.New("device is busy")

// OpenOptions says how Open opens a device.
type OpenOptions struct {
	// Write opens the device read-write; otherwise it is read-only.
	Write bool
	// Exclusive opens a block device with O_EXCL, which fails with ErrBusy
	// while the kernel holds it (mounted, mapped, part of a RAID) or another
	// process opened it exclusively. For a regular file it takes a
	// non-blocking flock instead.
	Exclusive bool
}

// Device is an open block device or regular image file. It implements
// io.ReaderAt and io.WriterAt at absolute byte offsets, and Sync, so the
// luks2 package can use it directly. A Device is safe for concurrent
// ReadAt and WriteAt calls.
type Device struct {
	f         *os.File
	path      string
	block     bool
	rdev      uint64
	size      int64
	logical   int
	physical  int
	writeable bool
}

var (
	_ io.ReaderAt = (*Device)(nil)
	_ io.WriterAt = (*Device)(nil)
	_ io.Closer   = (*Device)(nil)
)

// Open opens the block device or regular file at path and reads its size
// and sector sizes. Errors wrap the underlying *os.PathError or errno; an
// exclusive open of a busy device matches ErrBusy.
func Open(path string, opts OpenOptions) (*Device, error) {
	flags := unix.O_RDONLY | unix.O_CLOEXEC
	if opts.Write {
		flags = unix.O_RDWR | unix.O_CLOEXEC
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	isBlock := fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	if !isBlock && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("blockdev: %s is neither a block device nor a regular file", path)
	}
	if isBlock && opts.Exclusive {
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("blockdev: open %s exclusively: %w (%w)", path, ErrBusy, err)
		}
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	d := &Device{f: f, path: path, block: isBlock, writeable: opts.Write}
	if err := d.init(opts); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) init(opts OpenOptions) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return fmt.Errorf("blockdev: stat %s: %w", d.path, err)
	}
	if !d.block {
		if opts.Exclusive {
			if err := unix.Flock(int(d.f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				if errors.Is(err, unix.EWOULDBLOCK) {
					return fmt.Errorf("blockdev: lock %s: %w (%w)", d.path, ErrBusy, err)
				}
				return fmt.Errorf("blockdev: lock %s: %w", d.path, err)
			}
		}
		d.size = st.Size
		d.logical, d.physical = FileLogicalSectorSize, FilePhysicalSectorSize
		return nil
	}
	d.rdev = st.Rdev
	fd := d.f.Fd()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return fmt.Errorf("blockdev: BLKGETSIZE64 %s: %w", d.path, errno)
	}
	d.size = int64(size)
	lss, err := unix.IoctlGetInt(int(fd), unix.BLKSSZGET)
	if err != nil {
		return fmt.Errorf("blockdev: BLKSSZGET %s: %w", d.path, err)
	}
	pss, err := unix.IoctlGetUint32(int(fd), unix.BLKPBSZGET)
	if err != nil {
		return fmt.Errorf("blockdev: BLKPBSZGET %s: %w", d.path, err)
	}
	d.logical, d.physical = lss, int(pss)
	return nil
}

// Path returns the path the device was opened with.
func (d *Device) Path() string { return d.path }

// IsBlockDevice reports whether the device is a block device (not a file).
func (d *Device) IsBlockDevice() bool { return d.block }

// DevNum returns the block device's number (0 for a regular file); see
// DevNumString for the "major:minor" form device-mapper tables use.
func (d *Device) DevNum() uint64 { return d.rdev }

// Size returns the device size in bytes as read at Open.
func (d *Device) Size() int64 { return d.size }

// LogicalSectorSize returns the smallest addressable unit in bytes
// (BLKSSZGET; 512 for files).
func (d *Device) LogicalSectorSize() int { return d.logical }

// PhysicalSectorSize returns the device's physical sector size in bytes
// (BLKPBSZGET; 4096 for files).
func (d *Device) PhysicalSectorSize() int { return d.physical }

// File returns the underlying file, e.g. for further ioctls. It stays owned
// by the Device.
func (d *Device) File() *os.File { return d.f }

// ReadAt implements io.ReaderAt.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("blockdev: read %s at %d: %w", d.path, off, err)
	}
	return n, err
}

// WriteAt implements io.WriterAt. Writes beyond a block device's end fail;
// writes to a read-only Device fail with os.ErrPermission.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if !d.writeable {
		return 0, fmt.Errorf("blockdev: write %s: opened read-only: %w", d.path, os.ErrPermission)
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		err = fmt.Errorf("blockdev: write %s at %d: %w", d.path, off, err)
	}
	return n, err
}

// Sync flushes written data to stable storage (fsync, which for a block
// device also flushes the drive's cache).
func (d *Device) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("blockdev: sync %s: %w", d.path, err)
	}
	return nil
}

// Close closes the device (releasing an exclusive open or lock).
func (d *Device) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("blockdev: close %s: %w", d.path, err)
	}
	return nil
}

// DevNumString formats a device number as "major:minor".
func DevNumString(dev uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
}
