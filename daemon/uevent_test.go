package daemon

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

func TestParseUevent(t *testing.T) {
	add := "add@/devices/pci0000:00/0000:00:05.0/virtio3/block/vdb\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio3/block/vdb\x00SUBSYSTEM=block\x00MAJOR=254\x00MINOR=16\x00DEVNAME=vdb\x00DEVTYPE=disk\x00DISKSEQ=9\x00SEQNUM=1234\x00"
	u, err := ParseUevent([]byte(add))
	if err != nil {
		t.Fatal(err)
	}
	if u.Action != "add" || u.Subsystem != "block" || u.DevName != "vdb" || u.DevType != "disk" || !u.HasDevNum || u.Major != 254 || u.Minor != 16 || u.Seq != 1234 || u.Env["DISKSEQ"] != "9" {
		t.Fatalf("%+v", u)
	}
	if got := u.DevNum(); got != (254<<8 | 16) {
		t.Errorf("DevNum %d", got)
	}
	rm, err := ParseUevent([]byte("remove@/devices/virtual/block/dm-0\x00ACTION=remove\x00SUBSYSTEM=block\x00"))
	if err != nil || rm.Action != "remove" || rm.HasDevNum {
		t.Fatalf("%+v %v", rm, err)
	}
	for _, bad := range []string{
		"",
		"libudev\x00\xfe\xed\xca\xfe",
		"add",
		"add@",
		"add@devices/x",
		"@/devices/x",
		"add@/devices/x\x00NOEQUALS",
		"add@/devices/x\x00=v",
		"add@/devices/x\x00ACTION=remove",
		"add@/devices/x\x00DEVPATH=/devices/y",
		"add@/devices/x\x00MAJOR=8",
		"add@/devices/x\x00MAJOR=8\x00MINOR=-1",
		"add@/devices/x\x00MAJOR=99999999999\x00MINOR=1",
		"add@/devices/x\x00SEQNUM=x",
		"add@/x" + strings.Repeat("\x00A=B", 5000),
	} {
		if _, err := ParseUevent([]byte(bad)); !errors.Is(err, ErrBadUevent) {
			t.Errorf("ParseUevent(%.40q) = %v, want ErrBadUevent", bad, err)
		}
	}
}

func FuzzParseUevent(f *testing.F) {
	f.Add([]byte("add@/devices/virtual/block/loop0\x00ACTION=add\x00SUBSYSTEM=block\x00MAJOR=7\x00MINOR=0\x00DEVNAME=loop0\x00SEQNUM=1\x00"))
	f.Add([]byte("remove@/devices/virtual/block/dm-0\x00ACTION=remove\x00"))
	f.Add([]byte("libudev\x00"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		u, err := ParseUevent(msg)
		if err != nil {
			if !errors.Is(err, ErrBadUevent) {
				t.Fatalf("error %v does not wrap ErrBadUevent", err)
			}
			return
		}
		if u.Action == "" || !strings.HasPrefix(u.DevPath, "/") || u.Env == nil {
			t.Fatalf("accepted without header: %+v", u)
		}
		if a, ok := u.Env["ACTION"]; ok && a != u.Action {
			t.Fatalf("ACTION mismatch accepted: %+v", u)
		}
	})
}

// TestNetlinkUeventsLoop: attaching a loop device makes the kernel send a block uevent,
// which the netlink source reads (where the test runs in the initial network
// namespace; elsewhere the kernel sends nothing to us, and the VM test covers it).
func TestNetlinkUeventsLoop(t *testing.T) {
	n, err := OpenNetlinkUevents()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	dir := t.TempDir()
	img := formatTestImage(t, dir, "a.img", "x")
	dev := loopDevice(t, img)
	name := strings.TrimPrefix(dev, "/dev/")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		u, err := n.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				out, _ := exec.Command("readlink", "/proc/self/ns/net", "/proc/1/ns/net").CombinedOutput()
				testpeer.Missing(t, "no uevent for %s within 5 s (network namespaces: %s); the VM test TestHotplug covers this", dev, strings.Fields(string(out)))
			}
			t.Fatal(err)
		}
		if u.Subsystem == "block" && u.DevName == name {
			t.Logf("uevent: %s %s %d:%d", u.Action, u.DevPath, u.Major, u.Minor)
			return
		}
	}
}
