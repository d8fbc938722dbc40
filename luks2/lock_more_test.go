//go:build unix

package luks2

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLockDetectsSameSeqidReplacement: a header replaced behind an open Volume by one
// with the same seqid (cryptsetup luksHeaderRestore writes a backup's seqid as it
// is) is a concurrent change too. The write computed from the old header is refused
// with ErrConcurrentUpdate instead of overwriting the restored header with stale
// metadata whose keyslots point at areas now holding the backup's material.
func TestLockDetectsSameSeqidReplacement(t *testing.T) {
	ctx := context.Background()
	o := crashFormatOpts()
	o.UUID = "0f6f1f5e-8f0a-4c41-9d7c-3f8e2b9a6c10"
	mine := memFormat(t, crashSize, "mine", o)
	theirs := memFormat(t, crashSize, "theirs", o)
	path := writeImage(t, t.TempDir(), mine)
	v, err := OpenFile(path, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	tv, _ := openMem(t, theirs, ReadOnly)
	if got, want := tv.Metadata().Seqid, v.Metadata().Seqid; got != want {
		t.Fatalf("test needs equal seqids: %d, %d", got, want)
	}
	vk, _, err := v.Unlock(ctx, []byte("mine"))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	// Another process restores a header (and keyslots) with the same seqid.
	if err := os.WriteFile(path, theirs, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = v.AddKeyslot(ctx, vk, []byte("extra"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()})
	if !errors.Is(err, ErrConcurrentUpdate) && !errors.Is(err, ErrWrongVolumeKey) {
		t.Fatalf("add after a same-seqid replacement: %v", err)
	}
	rv, err := OpenFile(path, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer rv.Close()
	if !unlocks(rv, "theirs") {
		t.Fatal("the restored header no longer opens with its passphrase")
	}
}

// TestLockDirHardening: the block-device lock never follows a symlink, neither for
// the lock directory (cryptsetup opens it O_NOFOLLOW too) nor for the lock file,
// refuses a lock file that is not a regular file, and creates a missing directory
// 0700 with a 0600 lock file in it.
func TestLockDirHardening(t *testing.T) {
	ctx := context.Background()
	const rdev = 7<<8 | 99 // major 7, minor 99
	name := "L_7:99"
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the lock dir to use
		ok    bool
	}{
		{"missing directory", func(t *testing.T, dir string) string { return filepath.Join(dir, "cryptsetup") }, true},
		{"directory is a symlink", func(t *testing.T, dir string) string {
			real := filepath.Join(dir, "elsewhere")
			os.Mkdir(real, 0o700)
			link := filepath.Join(dir, "cryptsetup")
			if err := os.Symlink(real, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, false},
		{"lock file is a symlink", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "cryptsetup")
			os.Mkdir(d, 0o700)
			if err := os.Symlink(filepath.Join(dir, "victim"), filepath.Join(d, name)); err != nil {
				t.Fatal(err)
			}
			return d
		}, false},
		{"lock file is a FIFO", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "cryptsetup")
			os.Mkdir(d, 0o700)
			if err := unix.Mkfifo(filepath.Join(d, name), 0o600); err != nil {
				t.Fatal(err)
			}
			return d
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			dir := tc.setup(t, tmp)
			l := &flockLocker{dir: dir}
			release, err := l.lockBlock(ctx, rdev)
			if !tc.ok {
				if err == nil {
					release()
					t.Fatal("lock taken")
				}
				if _, err := os.Lstat(filepath.Join(tmp, "victim")); err == nil {
					t.Fatal("created the symlink's target")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, name): 0o600} {
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm()&^want != 0 {
					t.Errorf("%s: mode %v, want at most %v", p, fi.Mode().Perm(), want)
				}
			}
		})
	}
}

// TestLockRefusesWhenHeaderGone: when the device no longer carries a LUKS2 header
// under the lock (another tool formatted it while the Volume was open), no write
// recreates the old header over what is there now.
func TestLockRefusesWhenHeaderGone(t *testing.T) {
	ctx := context.Background()
	path := writeImage(t, t.TempDir(), memFormat(t, crashSize, "p", crashFormatOpts()))
	v, err := OpenFile(path, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	vk, _, err := v.Unlock(ctx, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	// Another tool (mkfs, wipefs) takes the device over.
	other := make([]byte, 2*DefaultHeaderSize)
	copy(other[1080:], []byte{0x53, 0xEF}) // an ext4 superblock magic
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(other, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for name, op := range map[string]func() error{
		"add keyslot": func() error {
			_, err := v.AddKeyslot(ctx, vk, []byte("q"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()})
			return err
		},
		"set label": func() error { return v.SetLabel("x", "") },
		"repair":    v.Repair,
	} {
		if err := op(); !errors.Is(err, ErrConcurrentUpdate) {
			t.Errorf("%s on a device that lost its header: %v, want ErrConcurrentUpdate", name, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:len(other)], other) {
		t.Fatal("the old header was written back over the new contents")
	}
}
