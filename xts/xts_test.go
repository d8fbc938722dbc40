package xts

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"

	xxts "golang.org/x/crypto/xts"
)

func randomBytes(r *rand.ChaCha8, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

func TestNewKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 24, 31, 33, 48, 63, 65, 128} {
		if _, err := New(make([]byte, n)); !errors.Is(err, ErrKeySize) {
			t.Errorf("New with a %d-byte key: got %v, want ErrKeySize", n, err)
		}
	}
	for _, n := range []int{32, 64} {
		if _, err := New(make([]byte, n)); err != nil {
			t.Errorf("New with a %d-byte key: %v", n, err)
		}
	}
}

// TestKeySchedule checks the round keys the assembly uses against FIPS-197
// Appendix A (A.1: AES-128, A.3: AES-256): the last round key, and the decryption
// schedule's first and last keys, which AESDEC takes unchanged.
func TestKeySchedule(t *testing.T) {
	for _, tc := range []struct{ key, last string }{
		{"2b7e151628aed2a6abf7158809cf4f3c", "d014f9a8c9ee2589e13f0cc8b6630ca6"},
		{"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", "fe4890d1e6188d0b046df344706c631e"},
	} {
		key := unhex(t, tc.key)
		var enc, dec roundKeys
		nr := expandKey(&enc, &dec, key)
		if got := fmt.Sprintf("%x", enc[16*nr:16*nr+16]); got != tc.last {
			t.Errorf("AES-%d last round key %s, want %s", 8*len(key), got, tc.last)
		}
		if !bytes.Equal(enc[:len(key)], key) || !bytes.Equal(dec[:16], enc[16*nr:16*nr+16]) || !bytes.Equal(dec[16*nr:16*nr+16], enc[:16]) {
			t.Errorf("AES-%d schedule ends do not match", 8*len(key))
		}
	}
}

// TestGenericUsesCryptoAES: the generic implementation's block cipher is the
// standard library's crypto/aes (hardware AES, constant-time, where the platform has
// it), not a table-driven AES of ours; Close drops it.
func TestGenericUsesCryptoAES(t *testing.T) {
	c := mustNew(t, make([]byte, 64), generic)
	for _, b := range []cipher.Block{c.ks.data, c.ks.tweak} {
		if b == nil || reflect.TypeOf(b).String() != "*aes.Block" {
			t.Fatalf("generic block cipher is %T, want crypto/aes", b)
		}
	}
	c.Close()
	if c.ks.data != nil || c.ks.tweak != nil {
		t.Fatal("Close kept the crypto/aes ciphers")
	}
}

type ieeeVector struct {
	Vector     int    `json:"vector"`
	Key        string `json:"key"`
	DataUnit   uint64 `json:"dataUnit"`
	Plaintext  string `json:"plaintext"`
	Ciphertext string `json:"ciphertext"`
}

func loadVectors(t *testing.T) []ieeeVector {
	t.Helper()
	raw, err := os.ReadFile("testdata/ieee1619-2007.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct{ Vectors []ieeeVector }
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) < 14 {
		t.Fatalf("only %d vectors in testdata", len(file.Vectors))
	}
	return file.Vectors
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestIEEE1619Vectors runs the IEEE 1619-2007 Annex B vectors through every
// implementation: the 512-byte data units through the sector API, the 32-byte ones
// (vectors 1-3) through the generic code, the only one that takes units that small.
func TestIEEE1619Vectors(t *testing.T) {
	vectors := loadVectors(t)
	forEachImplementation(t, func(t *testing.T, im *implementation) {
		for _, v := range vectors {
			t.Run(fmt.Sprintf("vector%d", v.Vector), func(t *testing.T) {
				key, pt, ct := unhex(t, v.Key), unhex(t, v.Plaintext), unhex(t, v.Ciphertext)
				c := mustNew(t, key, im)
				defer c.Close()
				got := make([]byte, len(pt))
				switch {
				case len(pt)%512 == 0:
					c.EncryptSectors(got, pt, 512, v.DataUnit)
				case im == generic:
					encryptGeneric(&c.ks, got, pt, len(pt), v.DataUnit)
				default:
					t.Skipf("%d-byte data unit: generic only", len(pt))
				}
				if !bytes.Equal(got, ct) {
					t.Fatalf("encrypt:\ngot  %x\nwant %x", got, ct)
				}
				if len(pt)%512 == 0 {
					c.DecryptSectors(got, got, 512, v.DataUnit)
				} else {
					decryptGeneric(&c.ks, got, got, len(pt), v.DataUnit)
				}
				if !bytes.Equal(got, pt) {
					t.Fatalf("decrypt:\ngot  %x\nwant %x", got, pt)
				}
			})
		}
	})
}

// crossCase is one input of the random cross-checks.
type crossCase struct {
	keySize    int
	sectorSize int
	sectors    int
	first      uint64
	offset     int // of src and dst in their allocations
	inPlace    bool
}

func (cc crossCase) String() string {
	place := "out"
	if cc.inPlace {
		place = "in"
	}
	return fmt.Sprintf("key%d/ss%d/n%d/first%#x/off%d/%s", 8*cc.keySize, cc.sectorSize, cc.sectors, cc.first, cc.offset, place)
}

// crossCases covers every sector size and key size, first sectors at 0, near 2^32
// and near 2^64-1 (where sector numbers wrap), odd buffer alignments, in-place and
// out-of-place, one sector and thousands.
func crossCases(r *rand.ChaCha8) []crossCase {
	var cases []crossCase
	firsts := []uint64{0, 1, 1<<32 - 9, 1<<32 - 1, 1 << 32, 1<<64 - 1, 1<<64 - 8, 1<<64 - 64}
	i := 0
	for _, ks := range []int{32, 64} {
		for _, ss := range []int{512, 1024, 2048, 4096} {
			for _, first := range firsts {
				for _, n := range []int{1, 2, 3, 17} {
					cases = append(cases, crossCase{ks, ss, n, first, []int{0, 1, 7, 8, 15, 33}[i%6], i%2 == 0})
					i++
				}
			}
			cases = append(cases, crossCase{ks, ss, 1, binary.LittleEndian.Uint64(randomBytes(r, 8)), 3, false})
		}
		// Thousands of sectors.
		cases = append(cases, crossCase{ks, 512, 3000, 1<<32 - 1000, 5, true})
		cases = append(cases, crossCase{ks, 4096, 1000, 1<<64 - 4000, 0, false})
	}
	return cases
}

// run encrypts (or decrypts) the case's input with c and returns a copy of the output.
func (cc crossCase) run(c *Cipher, in []byte, decrypt bool) []byte {
	n := len(in)
	srcBuf := make([]byte, n+cc.offset+16)
	src := srcBuf[cc.offset : cc.offset+n]
	copy(src, in)
	dst := src
	if !cc.inPlace {
		dstBuf := make([]byte, n+cc.offset+16)
		dst = dstBuf[cc.offset+1 : cc.offset+1+n]
	}
	if decrypt {
		c.DecryptSectors(dst, src, cc.sectorSize, cc.first)
	} else {
		c.EncryptSectors(dst, src, cc.sectorSize, cc.first)
	}
	return append([]byte(nil), dst...)
}

// TestAgainstXCrypto cross-checks every implementation with golang.org/x/crypto/xts,
// sector by sector.
func TestAgainstXCrypto(t *testing.T) {
	r := rand.NewChaCha8([32]byte{2})
	for _, cc := range crossCases(r) {
		key := randomBytes(r, cc.keySize)
		pt := randomBytes(r, cc.sectors*cc.sectorSize)
		ref, err := xxts.NewCipher(aes.NewCipher, key)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, len(pt))
		for i := range cc.sectors {
			s := pt[i*cc.sectorSize : (i+1)*cc.sectorSize]
			ref.Encrypt(want[i*cc.sectorSize:], s, cc.first+uint64(i*cc.sectorSize/512))
		}
		t.Run(cc.String(), func(t *testing.T) {
			forEachImplementation(t, func(t *testing.T, im *implementation) {
				if testing.Short() && im == generic && cc.sectors > 100 {
					t.Skip("short")
				}
				c := mustNew(t, key, im)
				defer c.Close()
				got := cc.run(c, pt, false)
				if i := firstDiff(got, want); i >= 0 {
					t.Fatalf("encrypt: first difference at byte %d (sector %d)", i, i/cc.sectorSize)
				}
				back := cc.run(c, got, true)
				if i := firstDiff(back, pt); i >= 0 {
					t.Fatalf("decrypt: first difference at byte %d (sector %d)", i, i/cc.sectorSize)
				}
			})
		})
	}
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestParallel checks the parallel variants against the sequential ones.
func TestParallel(t *testing.T) {
	r := rand.NewChaCha8([32]byte{3})
	key := randomBytes(r, 64)
	c, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		sectorSize, sectors int
		first               uint64
	}{
		{512, 1, 5}, {512, 257, 1<<32 - 3}, {4096, 97, 1<<64 - 100}, {4096, 1024, 0}, {1024, 3001, 77},
	} {
		pt := randomBytes(r, tc.sectorSize*tc.sectors)
		want := make([]byte, len(pt))
		c.EncryptSectors(want, pt, tc.sectorSize, tc.first)
		got := make([]byte, len(pt))
		c.EncryptSectorsParallel(got, pt, tc.sectorSize, tc.first)
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("%+v: parallel encryption differs at byte %d", tc, i)
		}
		c.DecryptSectorsParallel(got, got, tc.sectorSize, tc.first)
		if i := firstDiff(got, pt); i >= 0 {
			t.Fatalf("%+v: parallel decryption differs at byte %d", tc, i)
		}
	}
}

func TestPanics(t *testing.T) {
	c, err := New(make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	for name, f := range map[string]func(){
		"sector size 256":    func() { c.EncryptSectors(buf, buf[:512], 256, 0) },
		"sector size 8192":   func() { c.DecryptSectors(buf, buf, 8192, 0) },
		"partial sector":     func() { c.EncryptSectors(buf, buf[:1000], 512, 0) },
		"short dst":          func() { c.DecryptSectors(buf[:512], buf[:1024], 512, 0) },
		"parallel short dst": func() { c.EncryptSectorsParallel(buf[:512], buf[:1024], 512, 0) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
	// Empty input is fine.
	c.EncryptSectors(nil, nil, 512, 0)
	c.Close()
	defer func() {
		if recover() == nil {
			t.Error("use after Close: no panic")
		}
	}()
	c.EncryptSectors(buf, buf[:512], 512, 0)
}

func TestCloseZeroesSchedule(t *testing.T) {
	c, err := New(bytes.Repeat([]byte{0xa5}, 64))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	var zero roundKeys
	if c.ks.enc1 != zero || c.ks.dec1 != zero || c.ks.enc2 != zero {
		t.Fatal("Close left key material in the schedule")
	}
}

// TestSplits checks that one call over many sectors equals calls over every split of
// them, for every implementation: the sector loop inside the assembly must advance the
// sector number exactly as separate calls do.
func TestSplits(t *testing.T) {
	r := rand.NewChaCha8([32]byte{6})
	forEachImplementation(t, func(t *testing.T, im *implementation) {
		for _, ss := range []int{512, 1024, 2048, 4096} {
			const n = 9
			c := mustNew(t, randomBytes(r, 64), im)
			pt := randomBytes(r, n*ss)
			first := -uint64(3 * ss / 512) // wraps past 2^64-1 within the run
			whole := make([]byte, len(pt))
			c.EncryptSectors(whole, pt, ss, first)
			for split := 0; split <= n; split++ {
				got := make([]byte, len(pt))
				c.EncryptSectors(got[:split*ss], pt[:split*ss], ss, first)
				c.EncryptSectors(got[split*ss:], pt[split*ss:], ss, first+uint64(split*ss/512))
				if d := firstDiff(got, whole); d >= 0 {
					t.Fatalf("sector size %d, split after %d sectors: differs at byte %d", ss, split, d)
				}
			}
			c.Close()
		}
	})
}

// FuzzImplementations compares every implementation with the generic one on
// arbitrary data, keys, sector sizes and sector numbers.
func FuzzImplementations(f *testing.F) {
	f.Add(make([]byte, 64), make([]byte, 512), uint8(0), uint64(0))
	f.Add(bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 4096), uint8(3), uint64(1<<64-1))
	f.Fuzz(func(t *testing.T, key, data []byte, sizeSel uint8, sector uint64) {
		if len(key) != 32 && len(key) != 64 {
			return
		}
		ss := 512 << (sizeSel % 4)
		data = data[:len(data)/ss*ss]
		ref := mustNew(t, key, generic)
		want := make([]byte, len(data))
		ref.EncryptSectors(want, data, ss, sector)
		for _, im := range implementations {
			if !im.available || im == generic {
				continue
			}
			c := mustNew(t, key, im)
			got := make([]byte, len(data))
			c.EncryptSectors(got, data, ss, sector)
			if d := firstDiff(got, want); d >= 0 {
				t.Fatalf("%s encrypt differs from generic at byte %d", im.name, d)
			}
			c.DecryptSectors(got, got, ss, sector)
			if d := firstDiff(got, data); d >= 0 {
				t.Fatalf("%s decrypt differs at byte %d", im.name, d)
			}
		}
	})
}

func TestSecretsStayInside(t *testing.T) {
	key := bytes.Repeat([]byte{0x5a}, 64)
	c, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, "90") || strings.Contains(s, "5a") || strings.Contains(s, "[") {
			t.Errorf("formatted Cipher shows its contents: %s", s)
		}
	}
	if _, err := json.Marshal(c); err == nil {
		t.Error("json.Marshal of a Cipher succeeded")
	}
}
