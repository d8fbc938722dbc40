package vmtests

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// Archive builds a newc ("070701") cpio archive in memory, the format the kernel
// unpacks as an initramfs. Parent directories are created implicitly. Several archives
// may be concatenated into one initrd; later entries override earlier ones.
type Archive struct {
	entries map[string]entry
}

type entry struct {
	mode uint32
	data []byte
	link string
}

const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
)

// NewArchive returns an empty archive.
func NewArchive() *Archive { return &Archive{entries: map[string]entry{}} }

func (a *Archive) mkdirs(name string) {
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := a.entries[d]; !ok {
			a.entries[d] = entry{mode: cpioDir | 0o755}
		}
	}
}

func clean(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

// Dir adds a directory.
func (a *Archive) Dir(name string, perm os.FileMode) {
	name = clean(name)
	a.mkdirs(name)
	a.entries[name] = entry{mode: cpioDir | uint32(perm.Perm())}
}

// File adds a regular file with the given contents.
func (a *Archive) File(name string, data []byte, perm os.FileMode) {
	name = clean(name)
	a.mkdirs(name)
	a.entries[name] = entry{mode: cpioFile | uint32(perm.Perm()), data: data}
}

// CopyFile adds the host file src as name, keeping its permission bits.
func (a *Archive) CopyFile(name, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	a.File(name, data, fi.Mode().Perm())
	return nil
}

// Symlink adds a symbolic link name pointing to target.
func (a *Archive) Symlink(name, target string) {
	name = clean(name)
	a.mkdirs(name)
	a.entries[name] = entry{mode: cpioSymlink | 0o777, link: target}
}

// WriteTo writes the archive, directories before their contents, ending with the
// TRAILER!!! entry.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names) // a parent sorts before its children
	var buf bytes.Buffer
	ino := uint32(1)
	var total int64
	for _, n := range append(names, "TRAILER!!!") {
		e := a.entries[n]
		body := e.data
		if e.mode&0o170000 == cpioSymlink {
			body = []byte(e.link)
		}
		nlink := 1
		if e.mode&0o170000 == cpioDir {
			nlink = 2
		}
		if n == "TRAILER!!!" {
			e.mode, nlink, ino = 0, 1, 0
		}
		buf.Reset()
		fmt.Fprintf(&buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.mode, 0, 0, nlink, 0, len(body), 0, 0, 0, 0, len(n)+1, 0)
		buf.WriteString(n)
		buf.WriteByte(0)
		pad(&buf)
		buf.Write(body)
		pad(&buf)
		k, err := w.Write(buf.Bytes())
		total += int64(k)
		if err != nil {
			return total, fmt.Errorf("write cpio: %w", err)
		}
		ino++
	}
	return total, nil
}

func pad(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}
