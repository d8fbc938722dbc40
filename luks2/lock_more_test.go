//go:build unix

package luks2

import (
	"context"
	"errors"
	"os"
	"testing"
)

// TestLockDetectsSameSeqidReplacement: a header replaced behind an open Volume by one
// with the same seqid (cryptsetup luksHeaderRestore writes a backup's seqid as it
// is) is a concurrent change too. The write computed from the old header is refused
// with ErrConcurrentUpdate instead of overwriting the restored header with stale
// metadata whose keyslots point at areas now holding the backup's material.
func TestLockDetectsSameSeqidReplacement(t *testing.T) {
	ctx := context.Background()
	o := crashFormatOpts()
	o.UUID = "0f6f1f5e-8f0a-4c41-9d7c-3f8e2b9a6c10"
	mine := memFormat(t, crashSize, "mine", o)
	theirs := memFormat(t, crashSize, "theirs", o)
	path := writeImage(t, t.TempDir(), mine)
	v, err := OpenFile(path, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	tv, _ := openMem(t, theirs, ReadOnly)
	if got, want := tv.Metadata().Seqid, v.Metadata().Seqid; got != want {
		t.Fatalf("test needs equal seqids: %d, %d", got, want)
	}
	vk, _, err := v.Unlock(ctx, []byte("mine"))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	// Another process restores a header (and keyslots) with the same seqid.
	if err := os.WriteFile(path, theirs, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = v.AddKeyslot(ctx, vk, []byte("extra"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()})
	if !errors.Is(err, ErrConcurrentUpdate) && !errors.Is(err, ErrWrongVolumeKey) {
		t.Fatalf("add after a same-seqid replacement: %v", err)
	}
	rv, err := OpenFile(path, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer rv.Close()
	if !unlocks(rv, "theirs") {
		t.Fatal("the restored header no longer opens with its passphrase")
	}
}
