package xts

import (
	"crypto/aes"
	"fmt"
	"testing"

	xxts "golang.org/x/crypto/xts"
)

// benchSizes are the buffer sizes of the benchmarks: one sector, and 1 MiB of them.
var benchSectorSizes = []int{512, 4096}

func BenchmarkEncrypt(b *testing.B) {
	for _, im := range implementations {
		if !im.available {
			continue
		}
		for _, keySize := range []int{32, 64} {
			for _, ss := range benchSectorSizes {
				b.Run(fmt.Sprintf("%s/key%d/sector%d", im.name, 8*keySize, ss), func(b *testing.B) {
					benchmarkSectors(b, im, keySize, ss, 64<<10, false, false)
				})
			}
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	b.Run(fmt.Sprintf("%s/key512/sector4096", implementations[0].name), func(b *testing.B) {
		benchmarkSectors(b, defaultImplementation(), 64, 4096, 64<<10, true, false)
	})
}

func BenchmarkEncryptParallel(b *testing.B) {
	benchmarkSectors(b, defaultImplementation(), 64, 4096, 4<<20, false, true)
}

func benchmarkSectors(b *testing.B, im *implementation, keySize, sectorSize, size int, decrypt, parallel bool) {
	c := mustNew(b, make([]byte, keySize), im)
	defer c.Close()
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	var sector uint64
	for b.Loop() {
		switch {
		case parallel:
			c.EncryptSectorsParallel(buf, buf, sectorSize, sector)
		case decrypt:
			c.DecryptSectors(buf, buf, sectorSize, sector)
		default:
			c.EncryptSectors(buf, buf, sectorSize, sector)
		}
		sector += uint64(size / 512)
	}
}

func BenchmarkXCrypto(b *testing.B) {
	benchmarkXCrypto(b, 4096, 64<<10)
}

func benchmarkXCrypto(b *testing.B, sectorSize, size int) {
	c, err := xxts.NewCipher(aes.NewCipher, make([]byte, 64))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	var sector uint64
	for b.Loop() {
		for off := 0; off < size; off += sectorSize {
			c.Encrypt(buf[off:off+sectorSize], buf[off:off+sectorSize], sector)
			sector += uint64(sectorSize / 512)
		}
	}
}
