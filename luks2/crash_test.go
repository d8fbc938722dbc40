package luks2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
)

const (
	crashSize       = 2<<20 + 64<<10
	crashDataOffset = 2 << 20
)

// crashOp is one metadata change run against a device that may crash.
type crashOp struct {
	name string
	// setup prepares the image (before the change).
	setup func(t *testing.T) []byte
	// op performs the change.
	op func(v *Volume, vk *VolumeKey) error
	// check verifies a reopened image: done says whether op returned success.
	check func(t *testing.T, v *Volume, done bool)
}

func crashFormatOpts() *FormatOptions {
	o := fastFormat()
	o.DataOffset = crashDataOffset
	return o
}

func unlocks(v *Volume, pass string) bool {
	k, _, err := v.Unlock(context.Background(), []byte(pass))
	if err != nil {
		return false
	}
	k.Wipe()
	return true
}

// slotsConsistent checks that every keyslot the metadata lists opens with its
// passphrase (slot id -> passphrase): material is never referenced before it is
// written, nor wiped while still referenced.
func slotsConsistent(t *testing.T, v *Volume, pass map[int]string) {
	for _, ks := range v.Metadata().Keyslots {
		k, err := v.UnlockKeyslot(context.Background(), ks.ID, []byte(pass[ks.ID]))
		if err != nil {
			t.Errorf("keyslot %d is listed but does not open: %v", ks.ID, err)
			continue
		}
		k.Wipe()
	}
}

func hasToken(v *Volume, id int) bool {
	_, err := v.ExportToken(id)
	return err == nil
}

var crashOps = []crashOp{
	{
		// Only the primary copy is valid: the secondary must be written first.
		name: "token add with damaged secondary",
		setup: func(t *testing.T) []byte {
			img := memFormat(t, crashSize, "old", crashFormatOpts())
			img[DefaultHeaderSize+5000] ^= 1
			return img
		},
		op: func(v *Volume, vk *VolumeKey) error {
			_, err := v.AddToken([]byte(`{"type":"t","keyslots":["0"]}`), AnyToken)
			return err
		},
		check: func(t *testing.T, v *Volume, done bool) {
			if !unlocks(v, "old") {
				t.Error("old passphrase no longer opens the volume")
			}
			if done && !hasToken(v, 0) {
				t.Error("token missing after a completed add")
			}
		},
	},
	{
		// Only the secondary copy is valid.
		name: "keyslot add with damaged primary",
		setup: func(t *testing.T) []byte {
			img := memFormat(t, crashSize, "old", crashFormatOpts())
			img[5000] ^= 1
			return img
		},
		op: func(v *Volume, vk *VolumeKey) error {
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
	},
	{
		name:  "keyslot add",
		setup: func(t *testing.T) []byte { return memFormat(t, crashSize, "old", crashFormatOpts()) },
		op: func(v *Volume, vk *VolumeKey) error {
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
	},
	{
		name: "keyslot remove",
		setup: func(t *testing.T) []byte {
			img := memFormat(t, crashSize, "old", crashFormatOpts())
			d := newMemDev(img, -1)
			v, err := OpenDevice(d, crashSize, ReadWrite)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.AddKeyslotByPassphrase(context.Background(), []byte("old"), []byte("gone"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()}); err != nil {
				t.Fatal(err)
			}
			if _, err := v.AddToken([]byte(`{"type":"x","keyslots":["0","1"]}`), 0); err != nil {
				t.Fatal(err)
			}
			return d.cur
		},
		op: func(v *Volume, vk *VolumeKey) error { return v.RemoveKeyslot(context.Background(), 1) },
		check: func(t *testing.T, v *Volume, done bool) {
			if !unlocks(v, "old") {
				t.Error("remaining passphrase no longer opens the volume")
			}
			if done && unlocks(v, "gone") {
				t.Error("removed passphrase still opens the volume")
			}
			slotsConsistent(t, v, map[int]string{0: "old", 1: "gone"})
			md := v.Metadata()
			if done && (len(md.Keyslots) != 1 || len(md.Tokens[0].Keyslots) != 1) {
				t.Errorf("after remove: %+v", md)
			}
		},
	},
	{
		name:  "token add",
		setup: func(t *testing.T) []byte { return memFormat(t, crashSize, "old", crashFormatOpts()) },
		op: func(v *Volume, vk *VolumeKey) error {
			_, err := v.AddToken([]byte(`{"type":"diskcryptd-kmip","keyslots":["0"],"blob":"AAAA"}`), AnyToken)
			return err
		},
		check: func(t *testing.T, v *Volume, done bool) {
			if !unlocks(v, "old") {
				t.Error("old passphrase no longer opens the volume")
			}
			if done && !hasToken(v, 0) {
				t.Error("token missing after a completed add")
			}
		},
	},
	{
		// A KMS token rewrapped under a new KEK (diskcryptd kms rewrap): after any cut
		// the token is the old one or the new one, never missing or mixed.
		name: "token replace",
		setup: func(t *testing.T) []byte {
			img := memFormat(t, crashSize, "old", crashFormatOpts())
			d := newMemDev(img, -1)
			v, err := OpenDevice(d, crashSize, ReadWrite)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.AddToken([]byte(`{"type":"diskcryptd-kmip","keyslots":["0"],"kek_uid":"old"}`), 0); err != nil {
				t.Fatal(err)
			}
			return d.cur
		},
		op: func(v *Volume, vk *VolumeKey) error {
			return v.ReplaceToken(0, []byte(`{"type":"diskcryptd-kmip","keyslots":["0"],"kek_uid":"new"}`))
		},
		check: func(t *testing.T, v *Volume, done bool) {
			if !unlocks(v, "old") {
				t.Error("passphrase no longer opens the volume")
			}
			got, err := v.ExportToken(0)
			switch {
			case err != nil:
				t.Errorf("token missing after a cut replace: %v", err)
			case done && !strings.Contains(string(got), `"new"`):
				t.Errorf("token after a completed replace: %s", got)
			case !strings.Contains(string(got), `"kek_uid":"old"`) && !strings.Contains(string(got), `"kek_uid":"new"`):
				t.Errorf("token neither old nor new: %s", got)
			}
		},
	},
	{
		name:  "keyslot+token add",
		setup: func(t *testing.T) []byte { return memFormat(t, crashSize, "old", crashFormatOpts()) },
		op: func(v *Volume, vk *VolumeKey) error {
			_, _, err := v.AddKeyslotWithToken(context.Background(), vk, []byte("new"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()},
				[]byte(`{"type":"systemd-tpm2","keyslots":[],"tpm2-blob":"x"}`), AnyToken)
			return err
		},
		check: func(t *testing.T, v *Volume, done bool) {
			if !unlocks(v, "old") {
				t.Error("old passphrase no longer opens the volume")
			}
			nw, tok := unlocks(v, "new"), hasToken(v, 0)
			if nw != tok {
				t.Errorf("keyslot (%v) and token (%v) not added together", nw, tok)
			}
			if done && !nw {
				t.Error("new passphrase does not open after a completed add")
			}
			slotsConsistent(t, v, map[int]string{0: "old", 1: "new"})
		},
	},
}

// budgets returns the byte counts at which to cut the writes: every write
// boundary and a few bytes around it, the end of the binary header inside each
// write, every 512 bytes inside header writes, and a 16 KiB grid elsewhere.
func budgets(d *memDev, total int64) []int64 {
	bounds := d.bounds
	set := map[int64]bool{total: true}
	// Inside header writes, every 512 bytes.
	for i, w := range d.writes {
		if w.off < 2*DefaultHeaderSize {
			step := int64(512)
			if raceEnabled {
				step = 2048
			}
			for x := int64(0); x < int64(w.n); x += step {
				set[bounds[i]+x] = true
			}
		}
	}
	for _, b := range bounds {
		for _, d := range []int64{0, 1, 512, binHeaderSize, binHeaderSize + 1} {
			if b+d <= total {
				set[b+d] = true
			}
		}
		if b > 0 {
			set[b-1] = true
		}
	}
	for b := int64(0); b < total; b += 16 << 10 {
		set[b] = true
	}
	out := make([]int64, 0, len(set))
	for b := range set {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// TestCrashSafety cuts every metadata change after every write and at many byte
// offsets, and reopens both the image with every write issued so far and the image
// with only the synced writes.
func TestCrashSafety(t *testing.T) {
	for _, op := range crashOps {
		t.Run(op.name, func(t *testing.T) { runCrashOp(t, op) })
	}
}

// runCrashOp runs op against base images cut at every budget of budgets.
func runCrashOp(t *testing.T, op crashOp) {
	base := op.setup(t)
	ctx := context.Background()
	// A dry run counts the bytes written and finds the write boundaries.
	dry := newMemDev(base, -1)
	v, err := OpenDevice(dry, crashSize, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	vk, _, err := v.Unlock(ctx, []byte("old"))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	if err := op.op(v, vk); err != nil {
		t.Fatal(err)
	}
	total := dry.written
	bs := budgets(dry, total)
	t.Logf("%d writes, %d bytes, %d cut points", len(dry.bounds), total, len(bs))
	for _, budget := range bs {
		d := newMemDev(base, budget)
		v, err := OpenDevice(d, crashSize, ReadWrite)
		if err != nil {
			t.Fatal(err)
		}
		err = op.op(v, vk)
		done := err == nil
		if !done && !errors.Is(err, errCrash) {
			t.Fatalf("budget %d: unexpected error %v", budget, err)
		}
		if done != (budget >= total) {
			t.Fatalf("budget %d of %d: done=%v", budget, total, done)
		}
		images := []struct {
			name string
			b    []byte
		}{{"written", d.cur}, {"synced", d.durable}}
		if bytes.Equal(d.cur, d.durable) {
			images = images[:1]
		}
		for _, img := range images {
			t.Run(fmt.Sprintf("cut@%d/%s", budget, img.name), func(t *testing.T) {
				rv, err := OpenDevice(newMemDev(img.b, -1), crashSize, ReadWrite)
				if err != nil {
					t.Fatalf("reopen: %v", err)
				}
				op.check(t, rv, done && bytes.Equal(d.cur, d.durable))
			})
		}
	}
}
