package luks2

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// moreCrashOps cover the metadata changes TestCrashSafety's list leaves out: repair,
// erase, ReplaceKeyslots and header restore.
func moreCrashOps(t *testing.T) []crashOp {
	// backup is a header backup of the volume as it was while "new" opened it; the
	// device it is restored on has since replaced that passphrase with "old".
	var backup []byte
	restoreSetup := func(t *testing.T) []byte {
		img := memFormat(t, crashSize, "new", crashFormatOpts())
		v, d := openMem(t, img, ReadWrite)
		var buf bytes.Buffer
		if err := v.Backup(&buf); err != nil {
			t.Fatal(err)
		}
		backup = buf.Bytes()
		if _, err := v.AddKeyslotByPassphrase(context.Background(), []byte("new"), []byte("old"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
			t.Fatal(err)
		}
		if err := v.RemoveKeyslot(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
		return bytes.Clone(d.durable)
	}
	return []crashOp{
		{
			name: "repair damaged secondary",
			setup: func(t *testing.T) []byte {
				img := memFormat(t, crashSize, "old", crashFormatOpts())
				img[DefaultHeaderSize+5000] ^= 1
				return img
			},
			op: func(v *Volume, vk *VolumeKey) error { return v.Repair() },
			check: func(t *testing.T, v *Volume, done bool) {
				if !unlocks(v, "old") {
					t.Error("old passphrase no longer opens the volume")
				}
				md := v.Metadata()
				if done && (!md.PrimaryValid || !md.SecondaryValid) {
					t.Errorf("after a completed repair: primary %v secondary %v", md.PrimaryValid, md.SecondaryValid)
				}
			},
		},
		{
			name:  "erase",
			setup: func(t *testing.T) []byte { return memFormat(t, crashSize, "old", crashFormatOpts()) },
			op:    func(v *Volume, vk *VolumeKey) error { return v.Erase(context.Background()) },
			check: func(t *testing.T, v *Volume, done bool) {
				// The header stays readable at every cut (it opened); after a
				// completed erase no keyslot is left and nothing opens.
				if done && (len(v.Metadata().Keyslots) != 0 || unlocks(v, "old")) {
					t.Error("keyslots left after a completed erase")
				}
			},
		},
		{
			name: "replace keyslot and token",
			setup: func(t *testing.T) []byte {
				img := memFormat(t, crashSize, "old", crashFormatOpts())
				v, d := openMem(t, img, ReadWrite)
				if _, err := v.AddToken([]byte(`{"type":"diskcryptd-kmip","keyslots":["0"],"kek_uid":"old"}`), 0); err != nil {
					t.Fatal(err)
				}
				return bytes.Clone(d.durable)
			},
			op: func(v *Volume, vk *VolumeKey) error {
				_, _, _, err := v.ReplaceKeyslots(context.Background(), vk, []byte("new"), &KeyslotOptions{KDF: MinimumCostKDF()},
					[]byte(`{"type":"diskcryptd-kmip","keyslots":[],"kek_uid":"new"}`), 0, []int{0})
				return err
			},
			check: func(t *testing.T, v *Volume, done bool) {
				old, nw := unlocks(v, "old"), unlocks(v, "new")
				if !old && !nw {
					t.Error("neither the old nor the new passphrase opens the volume")
				}
				if done && (old || !nw) {
					t.Errorf("after a completed replace: old %v new %v", old, nw)
				}
				tok, err := v.ExportToken(0)
				if err != nil {
					t.Fatalf("token gone: %v", err)
				}
				if nw && !old && !bytes.Contains(tok, []byte(`"kek_uid":"new"`)) {
					t.Errorf("new keyslot without the new token: %s", tok)
				}
				slotsConsistent(t, v, map[int]string{0: "old", 1: "new"})
			},
		},
		{
			name:  "restore header backup",
			setup: restoreSetup,
			op: func(v *Volume, vk *VolumeKey) error {
				return RestoreHeader(v.dev, crashSize, bytes.NewReader(backup), int64(len(backup)))
			},
			check: func(t *testing.T, v *Volume, done bool) {
				old, nw := unlocks(v, "old"), unlocks(v, "new")
				if !old && !nw {
					t.Error("neither the device's passphrase nor the backup's opens the volume")
				}
				if done && !nw {
					t.Error("the backup's passphrase does not open after a completed restore")
				}
			},
		},
	}
}

// TestCrashSafetyMore: as TestCrashSafety, for moreCrashOps.
func TestCrashSafetyMore(t *testing.T) {
	for _, op := range moreCrashOps(t) {
		t.Run(op.name, func(t *testing.T) { runCrashOp(t, op) })
	}
}

// TestRestoreRefusesOtherLayout: like cryptsetup's luksHeaderRestore, a backup whose
// data offset or metadata size differs from the device's header is refused, and
// nothing is written.
func TestRestoreRefusesOtherLayout(t *testing.T) {
	o := crashFormatOpts()
	o.DataOffset = 1 << 20
	other := memFormat(t, crashSize, "other", o)
	bv, _ := openMem(t, other, ReadOnly)
	var buf bytes.Buffer
	if err := bv.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	img := memFormat(t, crashSize, "old", crashFormatOpts())
	d := newMemDev(img, -1)
	err := RestoreHeader(d, crashSize, bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if !errors.Is(err, ErrInvalidMetadata) || !strings.Contains(err.Error(), "data offset differs") {
		t.Fatalf("restore of another layout: %v", err)
	}
	if len(d.writes) != 0 {
		t.Fatalf("%d writes before refusing", len(d.writes))
	}
}

// TestCrashSafetySeqidWrap: a header at seqid 2^64-1 (hostile or ancient) is still
// changed crash-safely: the next seqid wraps to 0 in both copies, and a cut after
// the first copy leaves the old copy (at 2^64-1) winning, never a mix.
func TestCrashSafetySeqidWrap(t *testing.T) {
	op := crashOp{
		name: "keyslot add at seqid 2^64-1",
		setup: func(t *testing.T) []byte {
			img := memFormat(t, crashSize, "old", crashFormatOpts())
			v, d := openMem(t, img, ReadWrite)
			bh := v.bin
			bh.seqid = 1<<64 - 1
			_, _, pb, sb, err := v.encodeCopies(bh, v.meta.encode())
			if err != nil {
				t.Fatal(err)
			}
			out := bytes.Clone(d.cur)
			copy(out, pb)
			copy(out[bh.hdrSize:], sb)
			return out
		},
		op: func(v *Volume, vk *VolumeKey) error {
			if v.Metadata().Seqid != 1<<64-1 {
				return errors.New("setup did not reach seqid 2^64-1")
			}
			_, err := v.AddKeyslot(context.Background(), vk, []byte("new"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()})
			return err
		},
		check: func(t *testing.T, v *Volume, done bool) {
			if !unlocks(v, "old") {
				t.Error("old passphrase no longer opens the volume")
			}
			if done && !unlocks(v, "new") {
				t.Error("new passphrase does not open after a completed add")
			}
			slotsConsistent(t, v, map[int]string{0: "old", 1: "new"})
		},
	}
	runCrashOp(t, op)
}

// nopLocker lets a Volume on a memDev take the lock path (re-read under the lock)
// without a file to flock.
type nopLocker struct{}

func (nopLocker) lock(context.Context) (func(), error) { return func() {}, nil }

// TestCrashSafetyAfterLockReload: a Volume that read the header before another
// process added a keyslot re-reads it under the lock and adds its own keyslot on top.
// Cut at every point, the volume opens with the old passphrase and the other
// process's, never loses the other's keyslot, and has the new one once done.
func TestCrashSafetyAfterLockReload(t *testing.T) {
	ctx := context.Background()
	stale := memFormat(t, crashSize, "old", crashFormatOpts())
	ov, od := openMem(t, stale, ReadWrite)
	if _, err := ov.AddKeyslotByPassphrase(ctx, []byte("old"), []byte("other"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
		t.Fatal(err)
	}
	fresh := bytes.Clone(od.durable)
	run := func(budget int64) (*memDev, error) {
		d := newMemDev(stale, -1)
		v, err := OpenDevice(d, crashSize, ReadWrite)
		if err != nil {
			t.Fatal(err)
		}
		v.locker = nopLocker{}
		vk, _, err := v.Unlock(ctx, []byte("old"))
		if err != nil {
			t.Fatal(err)
		}
		defer vk.Wipe()
		// The other process's change lands after v read the header.
		d.cur, d.durable, d.budget = bytes.Clone(fresh), bytes.Clone(fresh), budget
		_, err = v.AddKeyslot(ctx, vk, []byte("new"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()})
		return d, err
	}
	dry, err := run(-1)
	if err != nil {
		t.Fatal(err)
	}
	total := dry.written
	for _, budget := range budgets(dry, total) {
		d, err := run(budget)
		done := err == nil
		if !done && !errors.Is(err, errCrash) {
			t.Fatalf("budget %d: %v", budget, err)
		}
		for name, img := range map[string][]byte{"written": d.cur, "synced": d.durable} {
			rv, err := OpenDevice(newMemDev(img, -1), crashSize, ReadOnly)
			if err != nil {
				t.Fatalf("cut@%d/%s: reopen: %v", budget, name, err)
			}
			if !unlocks(rv, "old") || !unlocks(rv, "other") {
				t.Errorf("cut@%d/%s: old %v other %v", budget, name, unlocks(rv, "old"), unlocks(rv, "other"))
			}
			if done && bytes.Equal(d.cur, d.durable) && !unlocks(rv, "new") {
				t.Errorf("cut@%d/%s: new passphrase does not open after a completed add", budget, name)
			}
		}
	}
}
