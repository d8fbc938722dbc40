package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testimg"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
	"golang.org/x/sys/unix"
)

// formatTestImage writes a 20 MiB LUKS2 image at dir/name with passphrase "pw" and a
// token of type "test" whose keyslot opens with tokenSecret.
func formatTestImage(t *testing.T, dir, name, tokenSecret string) string {
	t.Helper()
	ctx := context.Background()
	p := filepath.Join(dir, name)
	if err := os.Rename(testimg.Sparse(t, 20<<20), p); err != nil {
		t.Fatal(err)
	}
	kdf := luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}
	v, vk, err := luks2.FormatFile(ctx, p, []byte("pw"), &luks2.FormatOptions{Keyslot: kdf})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	defer vk.Wipe()
	if _, _, err := v.AddKeyslotWithToken(ctx, vk, []byte(tokenSecret), luks2.AnySlot, &kdf, []byte(`{"type":"test"}`), luks2.AnyToken); err != nil {
		t.Fatal(err)
	}
	return p
}

// loopDevice attaches img to a loop device (testimg.Loop).
func loopDevice(t *testing.T, img string) string {
	t.Helper()
	return testimg.Loop(t, img, 0)
}

func rdev(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return blockdev.DevNumString(st.Rdev)
}

// fakeDM is an in-memory device-mapper: it records what the daemon asks for. It never
// keeps a key.
type fakeDM struct {
	mu   sync.Mutex
	maps map[string]*blockdev.Mapping
}

func newFakeDM() *fakeDM { return &fakeDM{maps: map[string]*blockdev.Mapping{}} }

func (f *fakeDM) add(name, uuid, device string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maps[name] = &blockdev.Mapping{Name: name, UUID: uuid, Targets: []blockdev.Target{{Type: "crypt", Crypt: &blockdev.CryptTarget{Device: device}}}}
}

func (f *fakeDM) Table(_ context.Context, name string) (*blockdev.Mapping, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.maps[name]
	if !ok {
		return nil, fmt.Errorf("fake: %s: %w", name, blockdev.ErrMappingNotFound)
	}
	c := *m
	return &c, nil
}

func (f *fakeDM) Create(_ context.Context, name, uuid string, t *blockdev.CryptTarget, _ blockdev.CreateOptions) (*blockdev.Mapping, error) {
	f.mu.Lock()
	if _, ok := f.maps[name]; ok {
		f.mu.Unlock()
		return nil, blockdev.ErrMappingExists
	}
	f.mu.Unlock()
	f.add(name, uuid, t.Device)
	return &blockdev.Mapping{Name: name, UUID: uuid, Node: "/dev/mapper/" + name}, nil
}

func (f *fakeDM) Remove(_ context.Context, name string, _ blockdev.RemoveOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.maps[name]; !ok {
		return blockdev.ErrMappingNotFound
	}
	delete(f.maps, name)
	return nil
}

func statusOf(t *testing.T, st []VolumeStatus, name string) VolumeStatus {
	t.Helper()
	for _, s := range st {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no status for %s in %+v", name, st)
	return VolumeStatus{}
}

func testDaemon(dm DeviceMapper, vols ...VolumeConfig) *Daemon {
	return &Daemon{
		Config:     &Config{TokenTimeout: 5 * time.Second, DeviceTimeout: 300 * time.Millisecond, Volumes: vols},
		Protectors: func(VolumeConfig) []unlock.Protector { return []unlock.Protector{secretProtector{"sesame"}} },
		DM:         dm,
	}
}

// TestMapsTheDeviceItRead: the device path is a symlink that is pointed at another
// LUKS2 disk right after the daemon read the header; the mapping must still name the
// device the header came from (by the open descriptor), not whatever the path names
// by then.
func TestMapsTheDeviceItRead(t *testing.T) {
	dir := t.TempDir()
	first := loopDevice(t, formatTestImage(t, dir, "first.img", "sesame"))
	second := loopDevice(t, formatTestImage(t, dir, "second.img", "sesame"))
	link := filepath.Join(dir, "disk")
	if err := os.Symlink(first, link); err != nil {
		t.Fatal(err)
	}
	dm := newFakeDM()
	d := testDaemon(dm, VolumeConfig{Name: "vol", Device: link, MeasurePCR: -1})
	d.afterHeader = func(VolumeConfig) {
		os.Remove(link)
		if err := os.Symlink(second, link); err != nil {
			t.Error(err)
		}
	}
	s := statusOf(t, d.UnlockAll(context.Background()), "vol")
	if s.State != StateUnlocked {
		t.Fatalf("vol: %+v", s)
	}
	m, err := dm.Table(context.Background(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Targets[0].Crypt.Device, rdev(t, first); got != want {
		t.Fatalf("mapped device %s, want %s (the header was read from %s; the path now names %s = %s)", got, want, first, second, rdev(t, second))
	}
}

// TestExistingMapping: a mapping of the volume's name counts as "active" only when its
// dm UUID is CRYPT-LUKS2-<this volume's uuid>-<name> and it maps this device.
func TestExistingMapping(t *testing.T) {
	dir := t.TempDir()
	img := formatTestImage(t, dir, "a.img", "sesame")
	loop := loopDevice(t, img)
	v, err := luks2.OpenFile(img, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	uuid := v.Metadata().UUID
	v.Close()
	ours, err := blockdev.DMUUID(uuid, "vol")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := blockdev.DMUUID("0f4e2a5c-1b3d-4e6f-8a9b-0c1d2e3f4a5b", "vol")
	for _, tc := range []struct {
		name        string
		uuid, dev   string
		state       State
		reasonHas   string
		wantCreated bool
	}{
		{"ours", ours, rdev(t, loop), StateActive, "", false},
		{"another-volume", other, rdev(t, loop), StateFailed, "exists for another volume", false},
		{"another-device", ours, "7:250", StateFailed, "maps device 7:250", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dm := newFakeDM()
			dm.add("vol", tc.uuid, tc.dev)
			d := testDaemon(dm, VolumeConfig{Name: "vol", Device: loop, MeasurePCR: -1})
			s := statusOf(t, d.UnlockAll(context.Background()), "vol")
			if s.State != tc.state || !strings.Contains(s.Reason, tc.reasonHas) {
				t.Fatalf("%+v; want state %s, reason with %q", s, tc.state, tc.reasonHas)
			}
			if m, _ := dm.Table(context.Background(), "vol"); m.UUID != tc.uuid {
				t.Fatalf("the existing mapping was replaced: %+v", m)
			}
		})
	}
}

// fakeSys makes a /dev and /sys pair whose "block devices" are image files.
func fakeSys(t *testing.T, images map[string]string) *blockdev.Finder {
	t.Helper()
	root := t.TempDir()
	devDir, sysDir := filepath.Join(root, "dev"), filepath.Join(root, "sys")
	for name, img := range images {
		d := filepath.Join(sysDir, "class", "block", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(img)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "uevent"), []byte("DEVNAME="+name+"\nDEVTYPE=disk\n"), 0o644)
		os.WriteFile(filepath.Join(d, "size"), []byte(strconv.FormatInt(fi.Size()/512, 10)+"\n"), 0o644)
		os.MkdirAll(devDir, 0o755)
		if err := os.Link(img, filepath.Join(devDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return &blockdev.Finder{DevDir: devDir, SysDir: sysDir, Interval: 5 * time.Millisecond}
}

// TestDuplicateUUID: two devices carry the same LUKS UUID (a cloned or planted disk):
// both stay locked and the status says why; a third volume is not affected.
func TestDuplicateUUID(t *testing.T) {
	dir := t.TempDir()
	a := formatTestImage(t, dir, "a.img", "sesame")
	clone := filepath.Join(dir, "clone.img")
	b, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(clone, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := formatTestImage(t, dir, "c.img", "sesame")
	f := fakeSys(t, map[string]string{"vda": a, "vdb": clone, "vdc": c})
	d := testDaemon(newFakeDM(),
		VolumeConfig{Name: "a", Device: filepath.Join(f.DevDir, "vda"), MeasurePCR: -1},
		VolumeConfig{Name: "b", Device: filepath.Join(f.DevDir, "vdb"), MeasurePCR: -1},
		VolumeConfig{Name: "c", Device: filepath.Join(f.DevDir, "vdc"), MeasurePCR: -1},
	)
	d.Finder = f
	st := d.UnlockAll(context.Background())
	for _, n := range []string{"a", "b"} {
		s := statusOf(t, st, n)
		if s.State != StateLocked || !strings.Contains(s.Reason, ErrDuplicateUUID.Error()) || !strings.Contains(s.Reason, "vda") || !strings.Contains(s.Reason, "vdb") {
			t.Errorf("%s: %+v; want locked for a duplicate UUID naming vda and vdb", n, s)
		}
	}
	// c opens; mapping then needs a block device (these are image files).
	if s := statusOf(t, st, "c"); s.State != StateFailed || !errors.Is(errorFromReason(s.Reason), ErrNotBlockDevice) {
		t.Errorf("c: %+v; want it to get as far as mapping", s)
	}
}

// errorFromReason maps a status reason back to ErrNotBlockDevice for the check above.
func errorFromReason(r string) error {
	if strings.Contains(r, ErrNotBlockDevice.Error()) {
		return ErrNotBlockDevice
	}
	return errors.New(r)
}

// TestStatusSocketMode: the status socket is 0660, owned by the daemon's user and by
// the configured group when that group exists, never world-accessible.
func TestStatusSocketMode(t *testing.T) {
	var group *user.Group
	for gid := 1; gid < 1000 && group == nil; gid++ {
		if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil && gid != os.Getegid() {
			group = g
		}
	}
	for _, tc := range []struct {
		name, group string
		wantGID     int
	}{
		{"no-such-group", "diskcryptd-no-such-group", os.Getegid()},
		{"group", func() string {
			if group == nil {
				return ""
			}
			return group.Name
		}(), func() int {
			if group == nil {
				return -1
			}
			n, _ := strconv.Atoi(group.Gid)
			return n
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.group == "" {
				testpeer.Missing(t, "no group other than our own in the group database")
			}
			if os.Geteuid() != 0 && tc.wantGID != os.Getegid() {
				testpeer.Missing(t, "chown to another group needs root")
			}
			sock := filepath.Join(t.TempDir(), "run", "diskcryptd.sock")
			d := &Daemon{Config: &Config{Socket: sock, DeviceTimeout: time.Second}, SocketGroup: tc.group}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx, false) }()
			var fi os.FileInfo
			for i := 0; i < 200; i++ {
				if fi, _ = os.Stat(sock); fi != nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if fi == nil {
				t.Fatal("no socket")
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode().Perm() != 0o660 || int(st.Gid) != tc.wantGID || int(st.Uid) != os.Geteuid() {
				t.Errorf("socket mode %v uid %d gid %d; want 0660, uid %d, gid %d", fi.Mode().Perm(), st.Uid, st.Gid, os.Geteuid(), tc.wantGID)
			}
			if _, err := os.Stat(sock); !os.IsNotExist(err) {
				t.Errorf("socket left behind after the daemon stopped: %v", err)
			}
		})
	}
}

// TestMeasuresPCR15ByDefault: a volume line without tpm2-measure-pcr is measured into
// PCR 15 after it is mapped; tpm2-measure-pcr=no opts out.
func TestMeasuresPCR15ByDefault(t *testing.T) {
	dir := t.TempDir()
	a := loopDevice(t, formatTestImage(t, dir, "a.img", "sesame"))
	b := loopDevice(t, formatTestImage(t, dir, "b.img", "sesame"))
	cfg, err := ParseConfig(strings.NewReader("volume a " + a + "\nvolume b " + b + " tpm2-measure-pcr=no\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := testDaemon(newFakeDM())
	d.Config.Volumes = cfg.Volumes
	var mu sync.Mutex
	measured := map[string]int{}
	d.Measure = func(_ context.Context, pcr int, name, uuid string, key []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if len(key) == 0 || uuid == "" {
			t.Errorf("measure %s: empty key or UUID", name)
		}
		measured[name] = pcr
		return nil
	}
	st := d.UnlockAll(context.Background())
	for _, s := range st {
		if s.State != StateUnlocked {
			t.Fatalf("%+v", s)
		}
	}
	if len(measured) != 1 || measured["a"] != 15 {
		t.Fatalf("measured %v; want only a, into PCR 15", measured)
	}
}
