package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"golang.org/x/sys/unix"
)

// chanUevents is a UeventSource fed by the test.
type chanUevents chan *Uevent

func (c chanUevents) Next(ctx context.Context) (*Uevent, error) {
	select {
	case u := <-c:
		return u, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// waitState polls the daemon until volume name is in state want with a reason
// containing reasonHas.
func waitState(t *testing.T, d *Daemon, name string, want State, reasonHas string) VolumeStatus {
	t.Helper()
	var last VolumeStatus
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, s := range d.Status() {
			if s.Name == name {
				last = s
				if s.State == want && strings.Contains(s.Reason, reasonHas) {
					return s
				}
			}
		}
	}
	t.Fatalf("volume %s: %+v; want state %s with reason containing %q", name, last, want, reasonHas)
	return last
}

func blockEvent(action, name, dev string) *Uevent {
	u := &Uevent{Action: action, DevPath: "/devices/virtual/block/" + name, Subsystem: "block", DevName: name, Env: map[string]string{}}
	if dev != "" {
		var st unix.Stat_t
		if unix.Stat(dev, &st) == nil {
			u.Major, u.Minor, u.HasDevNum = unix.Major(st.Rdev), unix.Minor(st.Rdev), true
		}
	}
	return u
}

// TestHotplug: serve keeps running after the boot pass; a volume whose disk appears
// later is unlocked on the uevent; removing its mapping (diskcryptd lock) makes it
// locked; a reload (SIGHUP) adds a volume and retries the locked one; removing a disk
// sends its volume back to waiting and says the mapping is still there.
func TestHotplug(t *testing.T) {
	dir := t.TempDir()
	first := loopDevice(t, formatTestImage(t, dir, "first.img", "sesame"))
	second := loopDevice(t, formatTestImage(t, dir, "second.img", "sesame"))
	hot := filepath.Join(dir, "hot")
	dm := newFakeDM()
	events := make(chanUevents)
	d := testDaemon(dm, VolumeConfig{Name: "hot", Device: hot, MeasurePCR: -1})
	d.Config.DeviceTimeout = 50 * time.Millisecond
	d.Uevents = events
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, false) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	send := func(u *Uevent) {
		select {
		case events <- u:
		case <-time.After(10 * time.Second):
			t.Fatal("the daemon does not read uevents")
		}
	}

	waitState(t, d, "hot", StateWaiting, "not present")
	send(blockEvent("add", "loop9", "")) // another disk: nothing to do
	waitState(t, d, "hot", StateWaiting, "not present")
	if err := os.Symlink(first, hot); err != nil {
		t.Fatal(err)
	}
	send(blockEvent("add", strings.TrimPrefix(first, "/dev/"), first))
	waitState(t, d, "hot", StateUnlocked, "")

	// diskcryptd lock hot: the mapping goes, the kernel says "remove" for dm-N.
	if err := dm.Remove(ctx, "hot", blockdev.RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	send(blockEvent("remove", "dm-0", ""))
	waitState(t, d, "hot", StateLocked, "mapping removed")

	// SIGHUP with one more volume: it is unlocked, and the locked one is retried.
	d.Reload(ctx, &Config{TokenTimeout: 5 * time.Second, DeviceTimeout: 50 * time.Millisecond, Volumes: []VolumeConfig{
		{Name: "hot", Device: hot, MeasurePCR: -1},
		{Name: "second", Device: second, MeasurePCR: -1},
	}})
	waitState(t, d, "second", StateUnlocked, "")
	waitState(t, d, "hot", StateUnlocked, "")

	// The second disk is pulled while its mapping stays.
	send(blockEvent("remove", strings.TrimPrefix(second, "/dev/"), second))
	s := waitState(t, d, "second", StateWaiting, "still maps it")
	if !strings.Contains(s.Reason, "diskcryptd lock second") {
		t.Errorf("reason %q does not say what to do", s.Reason)
	}
	// Reload without "hot": it is forgotten.
	d.Reload(ctx, &Config{TokenTimeout: 5 * time.Second, DeviceTimeout: 50 * time.Millisecond, Volumes: []VolumeConfig{{Name: "second", Device: second, MeasurePCR: -1}}})
	for _, s := range d.Status() {
		if s.Name == "hot" {
			t.Errorf("hot still reported after reload: %+v", s)
		}
	}
}
