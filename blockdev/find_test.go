package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeTree builds a /dev and /sys pair where the "devices" are image files.
func fakeTree(t *testing.T) (devDir, sysDir string) {
	root := t.TempDir()
	devDir, sysDir = filepath.Join(root, "dev"), filepath.Join(root, "sys")
	if err := os.MkdirAll(filepath.Join(sysDir, "class", "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return devDir, sysDir
}

func addFakeDev(t *testing.T, devDir, sysDir, name string, uevent string, content []byte, size int64) {
	d := filepath.Join(sysDir, "class", "block", name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d, "uevent"), []byte("DEVNAME="+name+"\n"+uevent), 0o644)
	os.WriteFile(filepath.Join(d, "size"), []byte(strconv.FormatInt(size/512, 10)+"\n"), 0o644)
	f, err := os.Create(filepath.Join(devDir, name))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(content, 0)
	f.Truncate(size)
	f.Close()
}

func luksHeader(uuid string) []byte {
	h := make([]byte, 4096)
	copy(h, "LUKS\xba\xbe\x00\x02")
	copy(h[168:], uuid)
	return h
}

func TestFinderWithoutUdev(t *testing.T) {
	devDir, sysDir := fakeTree(t)
	const u = "0f4e2a5c-1b3d-4e6f-8a9b-0c1d2e3f4a5b"
	addFakeDev(t, devDir, sysDir, "vda", "DEVTYPE=disk\n", nil, 1<<20)
	addFakeDev(t, devDir, sysDir, "vda1", "DEVTYPE=partition\nPARTNAME=data-1\n", luksHeader(u), 1<<20)
	addFakeDev(t, devDir, sysDir, "vdb", "DEVTYPE=disk\n", nil, 0)
	f := &Finder{DevDir: devDir, SysDir: sysDir, Interval: 5 * time.Millisecond}

	for spec, want := range map[string]string{
		"UUID=" + u:                  "vda1",
		"UUID=" + strings.ToUpper(u): "vda1",
		"PARTLABEL=data-1":           "vda1",
		filepath.Join(devDir, "vda"): "vda",
	} {
		got, err := f.Find(spec)
		if err != nil || got != filepath.Join(devDir, want) {
			t.Errorf("Find(%s) = %q, %v; want %s", spec, got, err, want)
		}
	}
	if got, err := f.FindByLUKSUUID(u); err != nil || filepath.Base(got) != "vda1" {
		t.Errorf("FindByLUKSUUID = %q, %v", got, err)
	}
	for _, spec := range []string{"UUID=00000000-0000-0000-0000-000000000000", "PARTLABEL=nope", filepath.Join(devDir, "none")} {
		if _, err := f.Find(spec); !errors.Is(err, ErrDeviceNotFound) {
			t.Errorf("Find(%s) = %v, want ErrDeviceNotFound", spec, err)
		}
	}

	// Wait sees a device that appears later, and gives up with ctx.
	const u2 = "11111111-2222-4333-8444-555555555555"
	go func() {
		time.Sleep(30 * time.Millisecond)
		addFakeDev(t, devDir, sysDir, "vdc", "DEVTYPE=disk\n", luksHeader(u2), 1<<20)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := f.Wait(ctx, "UUID="+u2); err != nil || filepath.Base(got) != "vdc" {
		t.Fatalf("Wait = %q, %v", got, err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	_, err := f.Wait(short, "PARTLABEL=never")
	if !errors.Is(err, ErrDeviceNotFound) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait timeout = %v", err)
	}
}

func TestFinderUdevLinks(t *testing.T) {
	devDir, sysDir := fakeTree(t)
	const u = "0f4e2a5c-1b3d-4e6f-8a9b-0c1d2e3f4a5b"
	addFakeDev(t, devDir, sysDir, "sda", "", luksHeader(u), 1<<20)
	for _, l := range []string{"by-uuid/" + u, "by-partlabel/root"} {
		p := filepath.Join(devDir, "disk", l)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Symlink("../../sda", p); err != nil {
			t.Fatal(err)
		}
	}
	f := &Finder{DevDir: devDir, SysDir: sysDir}
	if got, err := f.FindByLUKSUUID(u); err != nil || got != filepath.Join(devDir, "disk", "by-uuid", u) {
		t.Errorf("FindByLUKSUUID = %q, %v", got, err)
	}
	if got, err := f.Find("PARTLABEL=root"); err != nil || got != filepath.Join(devDir, "disk", "by-partlabel", "root") {
		t.Errorf("Find(PARTLABEL=root) = %q, %v", got, err)
	}
}

// TestFindLUKSOnLoopDevice formats a loop device with cryptsetup and finds
// it by LUKS UUID through the real /sys/class/block (this host has no udev
// links for it).
func TestFindLUKSOnLoopDevice(t *testing.T) {
	img := makeImage(t, 32<<20)
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte("pass"), 0o600)
	run(t, "", "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, img)
	sigs, err := probePath(img)
	if err != nil {
		t.Fatal(err)
	}
	var sig *Signature
	if len(sigs) > 0 {
		sig = sigs[0]
	}
	if sig == nil || sig.UUID == "" {
		t.Fatalf("no LUKS UUID on image: %v", sig)
	}
	dev := loopDevice(t, img, 512)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := (&Finder{}).Wait(ctx, "UUID="+sig.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if r1, _ := filepath.EvalSymlinks(got); r1 != dev && got != dev {
		t.Fatalf("found %s, want %s", got, dev)
	}
}
