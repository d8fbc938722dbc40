package reencrypt

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestCheckTailFree makes real filesystems with mkfs (filling the device, or
// leaving its last 32 MiB free) and checks the verdict; the image never changes.
// cryptsetup, given the full-size ext4, goes ahead (it does not check).
func TestCheckTailFree(t *testing.T) {
	const reduce = 32 << 20
	cases := []struct {
		name, mkfs string
		args       []string
		size       int64 // image size
		fsSize     int64 // 0: whole image
		ok         bool
	}{
		{"ext4-full", "mkfs.ext4", []string{"-q", "-F"}, 128 << 20, 0, false},
		{"ext4-shrunk", "mkfs.ext4", []string{"-q", "-F"}, 128 << 20, 96 << 20, true},
		{"ext4-1MiB-short", "mkfs.ext4", []string{"-q", "-F"}, 128 << 20, 97 << 20, false},
		{"xfs-full", "mkfs.xfs", []string{"-q", "-f"}, 512 << 20, 0, false},
		{"xfs-shrunk", "mkfs.xfs", []string{"-q", "-f"}, 512 << 20, 480 << 20, true},
		{"btrfs-full", "mkfs.btrfs", []string{"-q", "-f"}, 256 << 20, 0, false},
		{"btrfs-shrunk", "mkfs.btrfs", []string{"-q", "-f"}, 256 << 20, 224 << 20, true},
		{"zeros", "", nil, 64 << 20, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			writeImage(t, img, nil)
			if err := os.Truncate(img, c.size); err != nil {
				t.Fatal(err)
			}
			if c.mkfs != "" {
				args := append([]string{}, c.args...)
				switch {
				case c.fsSize == 0:
					args = append(args, img)
				case c.mkfs == "mkfs.ext4":
					args = append(args, img, strconv.FormatInt(c.fsSize>>10, 10)+"k")
				case c.mkfs == "mkfs.xfs":
					args = append(args, "-d", "size="+strconv.FormatInt(c.fsSize, 10), img)
				case c.mkfs == "mkfs.btrfs":
					args = append(args, "-b", strconv.FormatInt(c.fsSize, 10), img)
				}
				if out, err := exec.Command(testpeer.Path(t, c.mkfs), args...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", c.mkfs, err, out)
				}
			}
			before := hashFile(t, img)
			fh, size := openFile(t, img)
			desc, err := CheckTailFree(fh, size, reduce)
			fh.Close()
			t.Logf("%s: %v", desc, err)
			if c.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !c.ok && !errors.Is(err, ErrTailInUse) {
				t.Fatalf("accepted a filesystem reaching into the tail (%s)", desc)
			}
			if hashFile(t, img) != before {
				t.Fatal("the check changed the image")
			}
			if c.name == "ext4-full" {
				kf := filepath.Join(t.TempDir(), "k")
				writeImage(t, kf, []byte("x"))
				cryptsetup(t, "reencrypt", "--encrypt", "--batch-mode", "--reduce-device-size", "32M", "--pbkdf", "pbkdf2",
					"--pbkdf-force-iterations", "1000", "--key-file", kf, img)
				t.Log("cryptsetup encrypted the full-size ext4 in place without complaint; its last 32 MiB are gone")
			}
		})
	}
	// Unknown data at the end of an unsigned device.
	img := filepath.Join(t.TempDir(), "img")
	b := make([]byte, 64<<20)
	b[len(b)-100] = 1
	writeImage(t, img, b)
	fh, size := openFile(t, img)
	defer fh.Close()
	if _, err := CheckTailFree(fh, size, reduce); !errors.Is(err, ErrTailInUse) {
		t.Fatalf("data in the tail of an unsigned device accepted: %v", err)
	}
}
