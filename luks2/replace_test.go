package luks2

import (
	"context"
	"errors"
	"testing"
)

// The crash test of ReplaceKeyslots joins TestCrashSafety's table: a recovery keyslot
// (1, token 0) and a passphrase (0) become a new keyslot with its token in place of 1.
func init() {
	crashOps = append(crashOps, crashOp{
		name: "keyslot+token replace",
		setup: func(t *testing.T) []byte {
			img := memFormat(t, crashSize, "old", crashFormatOpts())
			d := newMemDev(img, -1)
			v, err := OpenDevice(d, crashSize, ReadWrite)
			if err != nil {
				t.Fatal(err)
			}
			vk, _, err := v.Unlock(context.Background(), []byte("old"))
			if err != nil {
				t.Fatal(err)
			}
			defer vk.Wipe()
			if _, _, err := v.AddKeyslotWithToken(context.Background(), vk, []byte("stale"), AnySlot, &KeyslotOptions{KDF: MinimumCostKDF()},
				[]byte(`{"type":"systemd-recovery","keyslots":[]}`), AnyToken); err != nil {
				t.Fatal(err)
			}
			return d.cur
		},
		op: func(v *Volume, vk *VolumeKey) error {
			_, _, _, err := v.ReplaceKeyslots(context.Background(), vk, []byte("fresh"), &KeyslotOptions{KDF: MinimumCostKDF()},
				[]byte(`{"type":"systemd-recovery","keyslots":[]}`), AnyToken, []int{1})
			return err
		},
		check: func(t *testing.T, v *Volume, done bool) {
			// slotsConsistent opens every listed keyslot with its passphrase, so
			// which keyslots are listed says which protectors work.
			slotsConsistent(t, v, map[int]string{0: "old", 1: "stale", 2: "fresh"})
			listed := map[int]bool{}
			for _, k := range v.Metadata().Keyslots {
				listed[k.ID] = true
			}
			if !listed[0] {
				t.Error("the passphrase keyslot is gone")
			}
			stale, fresh := listed[1], listed[2]
			oldTok, newTok := hasToken(v, 0), hasToken(v, 1)
			// Exactly one of the two protectors, each with its token.
			if stale == fresh || stale != oldTok || fresh != newTok {
				t.Errorf("stale keyslot %v token %v, fresh keyslot %v token %v: want exactly one, with its token", stale, oldTok, fresh, newTok)
			}
			if done && !fresh {
				t.Error("the replacement is not there after a completed replace")
			}
		},
	})
}

func TestReplaceKeyslots(t *testing.T) {
	ctx := context.Background()
	img := memFormat(t, crashSize, "old", crashFormatOpts())
	v, err := OpenDevice(newMemDev(img, -1), crashSize, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	vk, _, err := v.Unlock(ctx, []byte("old"))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	kdf := &KeyslotOptions{KDF: MinimumCostKDF()}
	// Keyslot 1 with token 0 bound to it alone; token 1 shared by 0 and 1.
	if _, _, err := v.AddKeyslotWithToken(ctx, vk, []byte("a"), AnySlot, kdf, []byte(`{"type":"t","keyslots":[]}`), AnyToken); err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddToken([]byte(`{"type":"shared","keyslots":["0","1"]}`), AnyToken); err != nil {
		t.Fatal(err)
	}
	slot, tid, dropped, err := v.ReplaceKeyslots(ctx, vk, []byte("b"), kdf, []byte(`{"type":"t2","keyslots":[]}`), AnyToken, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	if slot != 2 || tid != 2 || len(dropped) != 1 || dropped[0] != 0 {
		t.Fatalf("slot %d token %d dropped %v; want 2, 2, [0]", slot, tid, dropped)
	}
	md := v.Metadata()
	if len(md.Keyslots) != 2 || hasToken(v, 0) || !hasToken(v, 1) || len(md.Tokens) != 2 {
		t.Fatalf("after replace: %+v", md)
	}
	for _, tk := range md.Tokens {
		if tk.Type == "shared" && (len(tk.Keyslots) != 1 || tk.Keyslots[0] != 0) {
			t.Errorf("shared token keeps keyslots %v, want [0]", tk.Keyslots)
		}
	}
	if unlocks(v, "a") || !unlocks(v, "b") {
		t.Error("old keyslot opens, or new one does not")
	}
	// The new token may take the place of the one it replaces, never of another.
	slot, tid, dropped, err = v.ReplaceKeyslots(ctx, vk, []byte("c"), kdf, []byte(`{"type":"t3","keyslots":[]}`), 2, []int{2})
	if err != nil || tid != 2 || slot != 1 || len(dropped) != 1 || dropped[0] != 2 || unlocks(v, "b") || !unlocks(v, "c") {
		t.Fatalf("replace in place: slot %d token %d dropped %v err %v", slot, tid, dropped, err)
	}
	if _, _, _, err := v.ReplaceKeyslots(ctx, vk, []byte("d"), kdf, []byte(`{"type":"t"}`), 1, []int{1}); !errors.Is(err, ErrTokenInUse) {
		t.Errorf("taking the id of a token kept: %v", err)
	}
	if _, _, _, err := v.ReplaceKeyslots(ctx, vk, []byte("c"), kdf, []byte(`{"type":"t"}`), AnyToken, []int{7}); !errors.Is(err, ErrKeyslotNotFound) {
		t.Errorf("dropping a missing keyslot: %v", err)
	}
	if len(v.Metadata().Keyslots) != 2 {
		t.Error("a refused replace changed the keyslots")
	}
}
