package luks2

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Device is the storage a volume lives on: a block device, an image file, a header
// backup file or a test double. Writes must be durable once Sync returns.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Mode says whether a volume is opened for reading only or for changes.
type Mode int

const (
	// ReadOnly opens a volume for reading metadata and recovering keys.
	ReadOnly Mode = iota
	// ReadWrite also allows metadata changes (keyslots, tokens, repair, erase).
	ReadWrite
)

// String returns "read-only" or "read-write".
func (m Mode) String() string {
	if m == ReadWrite {
		return "read-write"
	}
	return "read-only"
}

// readOnlyFile adapts an *os.File opened read-only to Device; writes fail.
type readOnlyFile struct{ *os.File }

func (f readOnlyFile) WriteAt([]byte, int64) (int, error) { return 0, ErrReadOnly }

// isBlockDevice reports whether path names a block device.
func isBlockDevice(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
}

// openPath opens path for mode and returns it with its size in bytes (block devices
// report their size through Seek).
func openPath(path string, mode Mode) (*os.File, Device, int64, error) {
	return openPathFlags(path, mode, 0)
}

// openPathFlags is openPath with extra open flags.
func openPathFlags(path string, mode Mode, extra int) (*os.File, Device, int64, error) {
	flag := os.O_RDONLY | extra
	if mode == ReadWrite {
		flag = os.O_RDWR | extra
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("luks2: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, nil, 0, fmt.Errorf("luks2: size of %s: %w", path, err)
	}
	if mode == ReadWrite {
		return f, f, size, nil
	}
	return f, readOnlyFile{f}, size, nil
}

// readFull reads len(b) bytes at off; a short device reads as ErrNotLUKS-style EOF.
func readFull(dev io.ReaderAt, b []byte, off int64) error {
	n, err := dev.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// writeFull writes b at off.
func writeFull(dev io.WriterAt, b []byte, off int64) error {
	n, err := dev.WriteAt(b, off)
	if err != nil {
		return err
	}
	if n != len(b) {
		return io.ErrShortWrite
	}
	return nil
}
