//go:build unix

package luks2

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"golang.org/x/sys/unix"
)

const lockChildEnv = "LUKS2_LOCK_TEST_CHILD"

// TestLockChild is the child process of TestConcurrentKeyslotAdd: it opens the image
// named in the environment and adds keyslots "<tag>-0", "<tag>-1", ... with the
// passphrase "pw". It does nothing in a normal run.
func TestLockChild(t *testing.T) {
	spec := os.Getenv(lockChildEnv)
	if spec == "" {
		t.Skip("child process of TestConcurrentKeyslotAdd")
	}
	parts := strings.Split(spec, ",")
	img, tag := parts[0], parts[1]
	n, _ := strconv.Atoi(parts[2])
	for i := 0; i < n; i++ {
		v, err := OpenFile(img, ReadWrite)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.AddKeyslotByPassphrase(context.Background(), []byte("pw"), []byte(fmt.Sprintf("%s-%d", tag, i)), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
			t.Fatalf("add %s-%d: %v", tag, i, err)
		}
		v.Close()
	}
}

// TestConcurrentKeyslotAdd runs two processes that each add keyslots to the same
// image at the same time. Every keyslot both added must be there afterwards and open
// with its passphrase (with diskcryptd and with cryptsetup): metadata writers are
// serialized by the device lock, and each works on the header as the other left it.
func TestConcurrentKeyslotAdd(t *testing.T) {
	const perChild = 4
	img := newImage(t, t.TempDir(), 17<<20)
	v, vk, err := FormatFile(context.Background(), img, []byte("pw"), fastFormat())
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	v.Close()

	var cmds []*exec.Cmd
	for _, tag := range []string{"a", "b"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLockChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", lockChildEnv, img, tag, perChild))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	v, err = OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	md := v.Metadata()
	if !md.PrimaryValid || !md.SecondaryValid {
		t.Fatalf("header copies: primary %v secondary %v", md.PrimaryValid, md.SecondaryValid)
	}
	if len(md.Keyslots) != 1+2*perChild {
		t.Fatalf("%d keyslots after two writers added %d each: lost updates", len(md.Keyslots), perChild)
	}
	cs := testpeer.Path(t, "cryptsetup")
	for _, tag := range []string{"a", "b"} {
		for i := 0; i < perChild; i++ {
			pass := []byte(fmt.Sprintf("%s-%d", tag, i))
			k, _, err := v.Unlock(context.Background(), pass)
			if err != nil {
				t.Fatalf("keyslot for %s: %v", pass, err)
			}
			k.Wipe()
			run(t, pass, cs, "open", "--test-passphrase", "--key-file", "-", img)
		}
	}
}

// TestHeldLockWaitsThenFails: while one Volume holds the device's metadata lock, a
// writer through another open file waits and fails with ErrDeviceLocked when its
// context ends, changing nothing; once the lock is released it succeeds.
// cryptsetup, which takes the same lock, waits too.
func TestHeldLockWaitsThenFails(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, 17<<20)
	ctx := context.Background()
	v1, vk, err := FormatFile(ctx, img, []byte("pw"), fastFormat())
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	defer v1.Close()
	release, err := v1.LockMetadata(ctx)
	if err != nil {
		t.Fatal(err)
	}

	v2, err := OpenFile(img, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	seq := v2.Metadata().Seqid
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = v2.AddKeyslot(short, vk, []byte("second"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()})
	if !errors.Is(err, ErrDeviceLocked) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AddKeyslot while locked = %v, want ErrDeviceLocked wrapping the deadline", err)
	}

	// cryptsetup waits for the lock too.
	cs := testpeer.Path(t, "cryptsetup")
	kf := writeKeyFile(t, dir, []byte("pw"))
	nk := writeKeyFile(t, dir, []byte("from cryptsetup"))
	finish := cryptsetupWaitsForLock(t, cs, kf, nk, img)
	// We are still the only writer: add a keyslot under our lock.
	if _, err := v1.AddKeyslot(ctx, vk, []byte("first"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
		t.Fatal(err)
	}
	release()
	finish()
	// v2 now re-reads the header under the lock and adds its keyslot after both.
	if _, err := v2.AddKeyslot(ctx, vk, []byte("second"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
		t.Fatal(err)
	}
	if got := v2.Metadata(); len(got.Keyslots) != 4 || got.Seqid <= seq {
		t.Fatalf("keyslots %d seqid %d, want 4 keyslots", len(got.Keyslots), got.Seqid)
	}
	for _, p := range []string{"pw", "first", "second", "from cryptsetup"} {
		run(t, []byte(p), cs, "open", "--test-passphrase", "--key-file", "-", img)
	}
}

// TestBlockDeviceLockAndExclusiveFormat: on a block device (a loop device), the
// metadata lock is cryptsetup's lock file L_major:minor in DefaultLockDir, which
// cryptsetup waits on; and FormatFile opens the device O_EXCL, so a device someone
// holds exclusively (mounted, mapped, or opened O_EXCL) is refused with EBUSY.
func TestBlockDeviceLockAndExclusiveFormat(t *testing.T) {
	losetup := testpeer.Path(t, "losetup")
	cs := testpeer.Path(t, "cryptsetup")
	dir := t.TempDir()
	img := newImage(t, dir, 20<<20)
	out, err := exec.Command(losetup, "-f", "--show", img).CombinedOutput()
	if err != nil {
		testpeer.Missing(t, "no loop device: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", loop).Run() })

	// Someone holds the device exclusively: format refuses, writing nothing.
	holder, err := os.OpenFile(loop, os.O_RDONLY|os.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, _, err := FormatFile(ctx, loop, []byte("pw"), fastFormat()); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("FormatFile of a device held O_EXCL = %v, want EBUSY", err)
	}
	holder.Close()
	v, vk, err := FormatFile(ctx, loop, []byte("pw"), fastFormat())
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	defer v.Close()

	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		t.Fatal(err)
	}
	lockFile := filepath.Join(DefaultLockDir, fmt.Sprintf("L_%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))))
	release, err := v.LockMetadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockFile); err != nil {
		t.Fatalf("lock file while the lock is held: %v", err)
	}
	kf := writeKeyFile(t, dir, []byte("pw"))
	nk := writeKeyFile(t, dir, []byte("cs"))
	finish := cryptsetupWaitsForLock(t, cs, kf, nk, loop)
	release()
	finish()
	run(t, []byte("cs"), cs, "open", "--test-passphrase", "--key-file", "-", loop)
}

// cryptsetupWaitsForLock starts `cryptsetup luksAddKey` on img while the caller holds
// the metadata lock and checks that it is still waiting two seconds later (it
// finishes in a fraction of that when it does not wait). Call finish after releasing
// the lock: it waits for cryptsetup and fails the test if it failed.
func cryptsetupWaitsForLock(t *testing.T, cs, keyFile, newKeyFile, img string) (finish func()) {
	t.Helper()
	cmd := exec.Command(cs, "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", keyFile, img, newKeyFile)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("cryptsetup luksAddKey finished while we held the lock (%v): %s", err, out)
	case <-time.After(2 * time.Second):
	}
	return func() {
		t.Helper()
		if err := <-exited; err != nil {
			t.Fatalf("cryptsetup luksAddKey: %v\n%s", err, out)
		}
	}
}
