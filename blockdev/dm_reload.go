package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DMSuspend suspends the mapping name: the kernel first waits for the I/O in
// flight and flushes it (and freezes a filesystem mounted on the mapping), then
// queues new I/O until DMResume. This is the step cryptsetup's online
// re-encryption takes around every table change.
func DMSuspend(ctx context.Context, name string) error {
	if err := checkMappingName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := openDMControl()
	if err != nil {
		return err
	}
	defer c.Close()
	_, _, err = c.do(&dmRequest{cmd: dmDevSuspendCmd, name: name, flags: dmSuspendFlag})
	return err
}

// DMResume resumes the mapping name, swapping in a table loaded with
// DMReload since the suspend (if any), and releases the queued I/O. It
// ignores ctx's end: a mapping left suspended would hang its users.
func DMResume(_ context.Context, name string) error {
	if err := checkMappingName(name); err != nil {
		return err
	}
	c, err := openDMControl()
	if err != nil {
		return err
	}
	defer c.Close()
	_, _, err = c.do(&dmRequest{cmd: dmDevSuspendCmd, name: name, flags: dmSecureDataFlag})
	return err
}

// DMReload loads targets, in order and back to back, as the inactive table
// of the existing mapping name (flagged as secure data, so the kernel wipes
// its copy of the keys); DMResume makes it live. Each target's Start must be
// the previous target's end. The keys exist in clear only in the ioctl
// buffer, which is wiped afterwards; the targets' Keys stay the caller's.
func DMReload(ctx context.Context, name string, targets []*CryptTarget, readOnly bool) error {
	if err := checkMappingName(name); err != nil {
		return err
	}
	if len(targets) == 0 {
		return errors.New("blockdev: DMReload: no targets")
	}
	var next uint64
	for i, t := range targets {
		if t == nil {
			return errors.New("blockdev: DMReload: nil target")
		}
		if err := t.Validate(); err != nil {
			return err
		}
		if t.Start != next {
			return fmt.Errorf("blockdev: DMReload: target %d starts at sector %d, want %d", i, t.Start, next)
		}
		next = t.Start + t.Length
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := openDMControl()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.reload(name, targets, readOnly)
}

func (c *dmControl) reload(name string, targets []*CryptTarget, readOnly bool) error {
	var payload []byte
	for _, t := range targets {
		params, err := t.Params()
		if err != nil {
			clear(payload)
			return err
		}
		// Grow without leaving key copies behind in a discarded array.
		if need := len(payload) + dmTargetSpecSize + len(params) + 8; need > cap(payload) {
			np := make([]byte, len(payload), 2*need)
			copy(np, payload)
			clear(payload)
			payload = np
		}
		payload = encodeTarget(payload, t.Start, t.Length, "crypt", params)
		clear(params)
	}
	flags := uint32(dmSecureDataFlag)
	if readOnly {
		flags |= dmReadonlyFlag
	}
	_, data, err := c.do(&dmRequest{cmd: dmTableLoadCmd, name: name, flags: flags, payload: payload, targetCount: uint32(len(targets))})
	clear(payload)
	clear(data)
	return err
}

// FlushBuffers writes back and drops the kernel's page cache of the block
// device open as f (ioctl BLKFLSBUF), so that the next reads see what a
// device-mapper target above it wrote behind the cache. On a regular file it
// does nothing.
func FlushBuffers(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeDevice == 0 {
		return nil
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("blockdev: flushing buffers of %s: %w", f.Name(), err)
	}
	return nil
}
