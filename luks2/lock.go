package luks2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrDeviceLocked means another process (diskcryptd or cryptsetup) holds the
// device's metadata lock and the context ended before it was released. It wraps the
// context's error.
var ErrDeviceLocked = errors.New("luks2: device metadata is locked by another process")

// ErrConcurrentUpdate means the metadata on disk changed (another process committed)
// between reading it and a write that was computed from it; nothing was written.
// Reopen the volume and retry.
var ErrConcurrentUpdate = errors.New("luks2: metadata changed on disk since it was read; nothing written, retry")

// DefaultLockDir is where block-device lock files live: the directory cryptsetup
// uses (its DEFAULT_LUKS2_LOCK_PATH), so that diskcryptd and cryptsetup exclude each
// other. The file for device major:minor is L_major:minor, as cryptsetup names it.
const DefaultLockDir = "/run/cryptsetup"

// lockPollInterval is how often a waiting writer retries a held lock.
const lockPollInterval = 20 * time.Millisecond

// deviceLocker takes the metadata write lock of one device; release gives it back.
type deviceLocker interface {
	lock(ctx context.Context) (release func(), err error)
}

// LockMetadata takes the device's metadata write lock for the Volume (a no-op for
// volumes opened with OpenDevice, whose caller provides exclusivity) and re-reads the
// headers if another process changed them since they were read. Every metadata
// change takes it by itself; callers take it to hold it across several changes (a
// re-encryption run, as cryptsetup does). It waits until ctx ends, then fails with
// ErrDeviceLocked. The lock is reentrant within the Volume; call release once per
// successful LockMetadata.
func (v *Volume) LockMetadata(ctx context.Context) (release func(), err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	rel, _, err := v.lockForWrite(ctx)
	if err != nil {
		return nil, err
	}
	return func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		rel()
	}, nil
}

// lockForWrite takes the device lock (v.mu held). On the first, outermost
// acquisition it re-reads the headers; changed reports that they differed from what
// v held, and v now holds the disk's state.
func (v *Volume) lockForWrite(ctx context.Context) (release func(), changed bool, err error) {
	if v.locker == nil {
		return func() {}, false, nil
	}
	if v.lockDepth == 0 {
		rel, err := v.locker.lock(ctx)
		if err != nil {
			return nil, false, err
		}
		v.lockRelease = rel
		st, err := readHeaders(v.dev)
		if err != nil {
			// Another process wiped or reformatted the device since v read it:
			// writing v's header back would destroy what is there now.
			v.lockRelease()
			v.lockRelease = nil
			return nil, false, fmt.Errorf("%w: the device no longer holds a valid LUKS2 header: %w", ErrConcurrentUpdate, err)
		}
		if v.differsFrom(st.best) {
			changed = true
			if err := v.load(); err != nil {
				v.lockRelease()
				v.lockRelease = nil
				return nil, false, err
			}
		}
	}
	v.lockDepth++
	done := false
	return func() {
		if done {
			return
		}
		done = true
		v.lockDepth--
		if v.lockDepth == 0 && v.lockRelease != nil {
			v.lockRelease()
			v.lockRelease = nil
		}
	}, changed, nil
}

// differsFrom reports whether the header copy c read from disk is not the state v
// holds. The seqid alone does not tell: cryptsetup's luksHeaderRestore writes a
// backup with the seqid it had, which may be v's.
func (v *Volume) differsFrom(c *headerCopy) bool {
	cur := v.st.best
	return c.bin.seqid != v.bin.seqid || c.bin.uuid != v.bin.uuid ||
		c.bin.label != v.bin.label || c.bin.subsystem != v.bin.subsystem ||
		cur == nil || !bytes.Equal(c.json, cur.json)
}

// lockUnchanged takes the device lock for a write computed from v's current state
// and fails with ErrConcurrentUpdate when the disk changed in the meantime.
func (v *Volume) lockUnchanged() (func(), error) {
	rel, changed, err := v.lockForWrite(context.Background())
	if err != nil {
		return nil, err
	}
	if changed {
		rel()
		return nil, ErrConcurrentUpdate
	}
	return rel, nil
}

func lockTimeout(ctx context.Context, what string) error {
	return fmt.Errorf("%w (%s): %w", ErrDeviceLocked, what, ctx.Err())
}

// beginWrite checks that v may be written, takes the device lock (re-reading the
// headers if another process changed them) and checks again. v.mu is held.
func (v *Volume) beginWrite(ctx context.Context) (func(), error) {
	if err := v.writable(); err != nil {
		return nil, err
	}
	release, _, err := v.lockForWrite(ctx)
	if err != nil {
		return nil, err
	}
	if err := v.writable(); err != nil {
		release()
		return nil, err
	}
	return release, nil
}
