package luks2_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/diskcryptd/diskcryptd/luks2"
)

// Format an image, enrol a machine protector (a random secret with the minimum-cost
// KDF and its token, in one metadata update), and unlock with either secret.
func Example() {
	ctx := context.Background()
	f, err := os.CreateTemp("", "luks2-example-*.img")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	f.Truncate(20 << 20)
	f.Close()

	v, vk, err := luks2.FormatFile(ctx, f.Name(), []byte("recovery passphrase"), &luks2.FormatOptions{
		Label:   "data",
		Keyslot: luks2.KeyslotOptions{KDF: luks2.KDFOptions{Type: luks2.KDFPBKDF2, Iterations: 1000}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()
	defer vk.Wipe()

	secret := []byte("base64-of-a-random-256-bit-secret")
	slot, token, err := v.AddKeyslotWithToken(ctx, vk, secret, luks2.AnySlot,
		&luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()},
		[]byte(`{"type":"diskcryptd-example","keyslots":[],"wrapped":"..."}`), luks2.AnyToken)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("enrolled keyslot", slot, "token", token)

	k, used, err := v.Unlock(ctx, secret)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("unlocked with keyslot", used, "same key:", k.Equal(vk), k)
	k.Wipe()

	_, _, err = v.Unlock(ctx, []byte("wrong"))
	fmt.Println(errors.Is(err, luks2.ErrNoKeyslotAccepts), err)

	md := v.Metadata()
	fmt.Println(md.Label, md.Cipher, md.KeySize*8, md.SectorSize, md.DataOffset, md.Tokens[0].Type, md.Tokens[0].Keyslots)
	// Output:
	// enrolled keyslot 1 token 0
	// unlocked with keyslot 1 same key: true luks2.VolumeKey(REDACTED)
	// true luks2: no keyslot accepts this key
	// data aes-xts-plain64 512 4096 16777216 diskcryptd-example [1]
}
