package blockdev

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testimg"
)

func TestDeviceFile(t *testing.T) {
	img := makeImage(t, 1<<20)
	d, err := Open(img, OpenOptions{Write: true, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != 1<<20 || d.LogicalSectorSize() != 512 || d.PhysicalSectorSize() != 4096 || d.IsBlockDevice() {
		t.Fatalf("size %d, sectors %d/%d, block %v", d.Size(), d.LogicalSectorSize(), d.PhysicalSectorSize(), d.IsBlockDevice())
	}
	msg := []byte("hello sector")
	if _, err := d.WriteAt(msg, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read back %q, %v", got, err)
	}
	// A second exclusive open of the same file is refused.
	if d2, err := Open(img, OpenOptions{Exclusive: true}); !errors.Is(err, ErrBusy) {
		if d2 != nil {
			d2.Close()
		}
		t.Fatalf("second exclusive open = %v, want ErrBusy", err)
	}
	ro, err := Open(img, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt(msg, 0); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("write to read-only device = %v", err)
	}
	if _, err := Open(t.TempDir(), OpenOptions{}); err == nil {
		t.Fatal("opening a directory succeeded")
	}
	if _, err := Open(img+".missing", OpenOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file = %v", err)
	}
}

// loopDevice attaches img to a loop device with the given logical sector size
// (testimg.Loop).
func loopDevice(t *testing.T, img string, sectorSize int) string {
	t.Helper()
	return testimg.Loop(t, img, sectorSize)
}

func TestDeviceBlock(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(strconv.Itoa(ss), func(t *testing.T) {
			img := makeImage(t, 8<<20)
			dev := loopDevice(t, img, ss)
			d, err := Open(dev, OpenOptions{Write: true, Exclusive: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if !d.IsBlockDevice() || d.Size() != 8<<20 || d.LogicalSectorSize() != ss || d.PhysicalSectorSize() < ss {
				t.Fatalf("block %v size %d sectors %d/%d", d.IsBlockDevice(), d.Size(), d.LogicalSectorSize(), d.PhysicalSectorSize())
			}
			if d.DevNum() == 0 || !strings.Contains(DevNumString(d.DevNum()), ":") {
				t.Fatalf("devnum %d", d.DevNum())
			}
			buf := bytes.Repeat([]byte{0x5a}, ss)
			if _, err := d.WriteAt(buf, int64(ss)); err != nil {
				t.Fatal(err)
			}
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(dev, OpenOptions{Exclusive: true}); !errors.Is(err, ErrBusy) {
				t.Fatalf("second O_EXCL open = %v, want ErrBusy", err)
			}
		})
	}
}
