package blockdev

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeDM is a minimal in-memory device-mapper "kernel" behind the ioctl
// hook of dmControl: enough to check what we send and how we parse replies.
type fakeDM struct {
	t       *testing.T
	devs    map[string]*fakeMapping
	nextMin uint32
	bufs    [][]byte // every ioctl buffer seen, to check it was wiped
	calls   []string
}

type fakeMapping struct {
	uuid      string
	dev       uint64
	params    string // as loaded (holds the key!)
	typ       string
	start     uint64
	length    uint64
	loadFlags uint32
	active    bool
	busy      int // EBUSY answers left for remove
	removed   bool
}

func newFakeDM(t *testing.T) (*fakeDM, *dmControl) {
	f := &fakeDM{t: t, devs: map[string]*fakeMapping{}}
	return f, &dmControl{ioctl: f.ioctl}
}

func (f *fakeDM) ioctl(cmd uintptr, buf []byte) unix.Errno {
	bo := byteOrder()
	f.bufs = append(f.bufs, buf)
	name := cstring(buf[48 : 48+dmNameLen])
	flags := bo.Uint32(buf[28:])
	start := bo.Uint32(buf[16:])
	f.calls = append(f.calls, dmOpNames[cmd]+" "+name)
	m := f.devs[name]
	reply := func(data []byte) {
		copy(buf[start:], data)
		bo.PutUint32(buf[12:], start+uint32(len(data)))
	}
	switch cmd {
	case dmDevCreateCmd:
		if m != nil {
			return unix.EBUSY // what dm_hash_insert answers
		}
		f.nextMin++
		m = &fakeMapping{uuid: cstring(buf[176 : 176+dmUUIDLen]), dev: unix.Mkdev(254, f.nextMin)}
		f.devs[name] = m
		bo.PutUint64(buf[40:], m.dev)
	case dmTableLoadCmd:
		if m == nil {
			return unix.ENXIO
		}
		ts, err := decodeTargets(buf[start:], bo.Uint32(buf[20:]))
		if err != nil || len(ts) != 1 {
			f.t.Errorf("table load: %v, %d targets", err, len(ts))
			return unix.EINVAL
		}
		m.typ, m.start, m.length, m.params = ts[0].typ, ts[0].start, ts[0].length, string(ts[0].params)
		m.loadFlags = flags
	case dmDevSuspendCmd:
		if m == nil {
			return unix.ENXIO
		}
		m.active = flags&dmSuspendFlag == 0
	case dmDevStatusCmd, dmTableStatusCmd:
		if m == nil {
			return unix.ENXIO
		}
		bo.PutUint64(buf[40:], m.dev)
		copy(buf[176:176+dmUUIDLen], m.uuid)
		fl := m.loadFlags & dmReadonlyFlag
		if m.active {
			fl |= dmActivePresentFlag
		}
		if cmd == dmTableStatusCmd && m.active {
			bo.PutUint32(buf[20:], 1)
			p := []byte(m.params)
			if flags&dmStatusTableFlag == 0 {
				p = nil
			}
			spec := encodeTarget(nil, m.start, m.length, m.typ, p)
			bo.PutUint32(spec[20:], uint32(len(spec))) // next: from data start
			reply(spec)
		}
		bo.PutUint32(buf[28:], fl)
	case dmListDevicesCmd:
		var data []byte
		for n, m := range f.devs {
			e := make([]byte, 12+len(n)+1)
			e = append(e, make([]byte, (8-len(e)%8)%8)...)
			bo.PutUint64(e[0:], m.dev)
			bo.PutUint32(e[8:], uint32(len(e)))
			copy(e[12:], n)
			data = append(data, e...)
		}
		if len(data) > 0 {
			// The last entry's next is 0.
			off := 0
			for {
				next := int(bo.Uint32(data[off+8:]))
				if off+next >= len(data) {
					bo.PutUint32(data[off+8:], 0)
					break
				}
				off += next
			}
		} else {
			data = make([]byte, 16)
		}
		reply(data)
	case dmDevRemoveCmd:
		if m == nil {
			return unix.ENXIO
		}
		if m.busy > 0 && flags&dmDeferredRemoveFlag == 0 {
			m.busy--
			return unix.EBUSY
		}
		delete(f.devs, name)
	case dmTableClearCmd:
	default:
		return unix.ENOTTY
	}
	return 0
}

func (f *fakeDM) checkWiped(t *testing.T) {
	t.Helper()
	for i, b := range f.bufs {
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Errorf("ioctl buffer %d (%s) not wiped", i, f.calls[i])
		}
	}
}

func testKey(n int) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = byte(0xA0 + i)
	}
	return k
}

func TestDMFakeCreateTableListRemove(t *testing.T) {
	f, c := newFakeDM(t)
	ctx := context.Background()
	key := testKey(64)
	tgt := &CryptTarget{Length: 8192, Cipher: "aes-xts-plain64", Key: key, Device: "7:0",
		Offset: 32768, SectorSize: 4096, Flags: AllowDiscards | NoReadWorkqueue}
	uuid, err := DMUUID("b1a0e2c2-4a1f-4d9b-9f1a-0123456789ab", "data")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = c.create(ctx, "data", uuid, tgt, CreateOptions{ReadOnly: true, DevDir: dir})
	// The node cannot be made in a temp dir without CAP_MKNOD on some
	// hosts; the mapping itself must exist either way.
	if err != nil && !errors.Is(err, unix.EPERM) {
		t.Logf("create: %v (node creation)", err)
	}
	m := f.devs["data"]
	if m == nil || !m.active {
		t.Fatalf("mapping not created and resumed: %v", f.calls)
	}
	want := "aes-xts-plain64 " + hex.EncodeToString(key) + " 0 7:0 32768 3 allow_discards no_read_workqueue sector_size:4096"
	if m.params != want || m.typ != "crypt" || m.length != 8192 {
		t.Errorf("loaded %s %d %q, want crypt 8192 %q", m.typ, m.length, m.params, want)
	}
	if m.loadFlags&dmSecureDataFlag == 0 || m.loadFlags&dmReadonlyFlag == 0 {
		t.Errorf("table load flags %#x lack secure data / read-only", m.loadFlags)
	}
	if m.uuid != "CRYPT-LUKS2-b1a0e2c24a1f4d9b9f1a0123456789ab-data" {
		t.Errorf("dm uuid %q", m.uuid)
	}
	if !bytes.Equal(key, testKey(64)) {
		t.Error("caller's key was modified")
	}

	got, err := c.table("data")
	if err != nil {
		t.Fatal(err)
	}
	if !got.IsCrypt() || !got.ReadOnly || got.UUID != m.uuid {
		t.Fatalf("table: %+v", got)
	}
	if strings.Contains(got.Targets[0].Params, hex.EncodeToString(key)[:16]) {
		t.Fatalf("table params leak the key: %q", got.Targets[0].Params)
	}
	ct := got.Targets[0].Crypt
	if ct == nil || ct.Key != nil || ct.SectorSize != 4096 || ct.Flags != AllowDiscards|NoReadWorkqueue || ct.Offset != 32768 || ct.Device != "7:0" {
		t.Fatalf("parsed crypt target: %+v", ct)
	}

	list, err := c.list(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "data" {
		t.Fatalf("list = %v, %v", list, err)
	}

	f.devs["data"].busy = 10
	err = c.remove(ctx, "data", RemoveOptions{Retries: 2, RetryInterval: time.Millisecond})
	if !errors.Is(err, ErrBusy) || !errors.Is(err, unix.EBUSY) {
		t.Fatalf("remove busy = %v, want ErrBusy", err)
	}
	f.devs["data"].busy = 2
	if err := c.remove(ctx, "data", RemoveOptions{Retries: 3, RetryInterval: time.Millisecond, DevDir: dir}); err != nil {
		t.Fatalf("remove with retries: %v", err)
	}
	if err := c.remove(ctx, "data", RemoveOptions{DevDir: dir}); !errors.Is(err, ErrMappingNotFound) {
		t.Fatalf("second remove = %v, want ErrMappingNotFound", err)
	}
	f.checkWiped(t)
}

func TestDMFakeCreateExistsAndCancel(t *testing.T) {
	f, c := newFakeDM(t)
	ctx := context.Background()
	tgt := &CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: testKey(32), Device: "7:0"}
	f.devs["x"] = &fakeMapping{}
	if _, err := c.create(ctx, "x", "", tgt, CreateOptions{}); !errors.Is(err, ErrMappingExists) {
		t.Fatalf("create over existing = %v, want ErrMappingExists", err)
	}
	f.devs["y"] = &fakeMapping{busy: 100}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := c.remove(cctx, "y", RemoveOptions{Retries: 100, RetryInterval: time.Hour})
	if !errors.Is(err, ErrBusy) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled remove = %v", err)
	}
	if err := c.remove(ctx, "y", RemoveOptions{Deferred: true}); err != nil {
		t.Fatalf("deferred remove: %v", err)
	}
}

func TestDMIoctlNumbers(t *testing.T) {
	// Values of DM_VERSION, DM_DEV_CREATE and DM_TABLE_LOAD on Linux.
	for cmd, want := range map[uintptr]uintptr{0: 0xc138fd00, 3: 0xc138fd03, 9: 0xc138fd09, 12: 0xc138fd0c} {
		if got := dmIoctlNumber(cmd); got != want {
			t.Errorf("ioctl %d = %#x, want %#x", cmd, got, want)
		}
	}
}

func TestDMNoControl(t *testing.T) {
	if _, _, _, err := DMVersion(); err == nil {
		t.Skip("device-mapper present")
	}
	if _, err := DMList(context.Background()); !errors.Is(err, ErrNoDeviceMapper) {
		t.Fatalf("DMList without device-mapper = %v, want ErrNoDeviceMapper", err)
	}
}
