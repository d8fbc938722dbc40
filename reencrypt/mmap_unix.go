//go:build unix

package reencrypt

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapper maps windows of an *os.File (image or block device) shared and
// read-write, so that a hotzone is hashed and rewritten in the page cache without
// copies through read and write.
type mapper struct{ f *os.File }

// newMapper returns a mapper for dev, or nil when dev is not an *os.File.
func newMapper(dev device) *mapper {
	f, ok := dev.(*os.File)
	if !ok {
		return nil
	}
	return &mapper{f: f}
}

// mapRange maps [off, off+n); off must be page aligned.
func (m *mapper) mapRange(off int64, n int) ([]byte, error) {
	return unix.Mmap(int(m.f.Fd()), off, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
}

// sync writes the mapped range back and waits for it.
func (m *mapper) sync(b []byte) error { return unix.Msync(b, unix.MS_SYNC) }

func (m *mapper) unmap(b []byte) error { return unix.Munmap(b) }

func pageSize() int { return os.Getpagesize() }
