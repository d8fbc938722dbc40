//go:build unix

package reencrypt

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapper maps windows of an *os.File (image or block device) read-only, so that a
// hotzone is hashed and decrypted from the page cache without a copy through read.
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
	return unix.Mmap(int(m.f.Fd()), off, n, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
}

func (m *mapper) unmap(b []byte) error { return unix.Munmap(b) }

func pageSize() int { return os.Getpagesize() }

// killSelf ends the process as kill -9 does (tests: Options.killAt).
func killSelf() {
	unix.Kill(os.Getpid(), unix.SIGKILL)
	select {}
}
