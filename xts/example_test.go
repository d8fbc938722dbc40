package xts_test

import (
	"bytes"
	"fmt"

	"github.com/diskcryptd/diskcryptd/xts"
)

// A LUKS2 volume with 4096-byte sectors still numbers its sectors in 512-byte units:
// the data at byte offset off of the segment has sector number off/512.
func ExampleCipher_EncryptSectors() {
	key := bytes.Repeat([]byte{0x42}, 64) // AES-256-XTS; a real volume key is random
	c, err := xts.New(key)
	if err != nil {
		panic(err)
	}
	defer c.Close()

	const sectorSize = 4096
	data := make([]byte, 4*sectorSize)
	off := int64(3 * sectorSize) // where data sits in the segment
	c.EncryptSectors(data, data, sectorSize, uint64(off/512))
	c.DecryptSectors(data, data, sectorSize, uint64(off/512))
	fmt.Println(bytes.Equal(data, make([]byte, len(data))))
	// Output: true
}
