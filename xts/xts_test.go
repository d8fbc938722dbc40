package xts

import (
	"bytes"
	"crypto/rand"
	"testing"

	"crypto/aes"
	xxts "golang.org/x/crypto/xts"
)

func TestAgainstXCrypto(t *testing.T) {
	for _, ks := range []int{32, 64} {
		key := make([]byte, ks)
		rand.Read(key)
		c, err := New(key)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := xxts.NewCipher(aes.NewCipher, key)
		for _, ss := range []int{512, 4096} {
			src := make([]byte, ss*3)
			rand.Read(src)
			got := make([]byte, len(src))
			c.EncryptSectors(got, src, ss, 1000)
			for i := 0; i < 3; i++ {
				want := make([]byte, ss)
				ref.Encrypt(want, src[i*ss:(i+1)*ss], uint64(1000+i*ss/512))
				if !bytes.Equal(got[i*ss:(i+1)*ss], want) {
					t.Fatalf("key %d sector size %d: sector %d differs", ks, ss, i)
				}
			}
			c.DecryptSectors(got, got, ss, 1000)
			if !bytes.Equal(got, src) {
				t.Fatal("round trip failed")
			}
		}
	}
}
