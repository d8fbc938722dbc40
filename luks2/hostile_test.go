package luks2

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// hostileMetadataEdits turn cryptsetup 2.6's metadata into hostile variants: offsets
// and sizes outside their areas or overflowing, references to missing objects,
// digests too short to verify anything. Each must be refused with
// ErrInvalidMetadata (a clear error, no panic, nothing allocated by its size).
var hostileMetadataEdits = []struct {
	name, old, new string
}{
	{"area in the secondary header", `"offset":"32768","size":"258048"`, `"offset":"16384","size":"258048"`},
	{"area at offset 0", `"offset":"32768","size":"258048"`, `"offset":"0","size":"258048"`},
	{"area of size 0", `"offset":"32768","size":"258048"`, `"offset":"32768","size":"0"`},
	{"area past the keyslots area", `"offset":"32768","size":"258048"`, `"offset":"16773120","size":"258048"`},
	{"area offset+size overflows", `"offset":"32768","size":"258048"`, `"offset":"9223372036854771712","size":"9223372036854771712"`},
	{"area too small for the split key", `"size":"258048"`, `"size":"4096"`},
	{"stripes beyond the limit", `"stripes":4000`, `"stripes":400000000`},
	{"negative stripes", `"stripes":4000`, `"stripes":-1`},
	{"keyslot key_size huge", `"type":"luks2","key_size":64`, `"type":"luks2","key_size":1048576`},
	{"keyslots area into the data segment", `"keyslots_size":"16744448"`, `"keyslots_size":"16748544"`},
	{"keyslots_size overflows", `"keyslots_size":"16744448"`, `"keyslots_size":"18446744073709551615"`},
	{"segment at offset 0", `"offset":"16777216"`, `"offset":"0"`},
	{"segment inside the header", `"offset":"16777216"`, `"offset":"16384"`},
	{"segment inside the keyslots area", `"offset":"16777216"`, `"offset":"1048576"`},
	{"segment of size 0", `"size":"dynamic"`, `"size":"0"`},
	{"segment offset+size overflows", `"size":"dynamic"`, `"size":"9223372036854771712"`},
	{"segment offset overflows", `"offset":"16777216"`, `"offset":"18446744073709547520"`},
	{"segment size not sector aligned", `"size":"dynamic"`, `"size":"1000"`},
	{"digest to a missing keyslot", `"keyslots":["0"],"segments":["0"]`, `"keyslots":["5"],"segments":["0"]`},
	{"digest to a missing segment", `"keyslots":["0"],"segments":["0"]`, `"keyslots":["0"],"segments":["3"]`},
	{"digest of one byte", `"digest":"hZe1DLC+Hj88iVCEuJSJfLyG9Sx5iG19iwIvkiiu3Nw="`, `"digest":"hQ=="`},
	{"digest iterations 0", `"iterations":1000,"salt":"cKHv`, `"iterations":0,"salt":"cKHv`},
	{"digest iterations above 2^32", `"iterations":1000,"salt":"cKHv`, `"iterations":4294967296,"salt":"cKHv`},
	{"token to a missing keyslot", `"type":"vendor-x","keyslots":["0"]`, `"type":"vendor-x","keyslots":["7"]`},
	{"argon2 memory above cryptsetup's limit", `"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"AWKn`, `"type":"argon2id","time":4,"memory":4194305,"cpus":1,"salt":"AWKn`},
	{"argon2 lanes", `"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"AWKn`, `"type":"argon2id","time":4,"memory":1024,"cpus":100000,"salt":"AWKn`},
	{"json_size differs from the header", `"json_size":"12288"`, `"json_size":"28672"`},
	{"json_size overflows", `"json_size":"12288"`, `"json_size":"18446744073709551615"`},
}

func TestHostileMetadata(t *testing.T) {
	orig := cryptsetupJSON(t)
	if _, err := parseMetadata([]byte(orig), DefaultHeaderSize); err != nil {
		t.Fatalf("cryptsetup's metadata: %v", err)
	}
	for _, tc := range hostileMetadataEdits {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(orig, tc.old) {
				t.Fatalf("%q not in cryptsetup's metadata", tc.old)
			}
			bad := strings.Replace(orig, tc.old, tc.new, 1)
			if _, err := parseMetadata([]byte(bad), DefaultHeaderSize); !errors.Is(err, ErrInvalidMetadata) {
				t.Fatalf("accepted (err %v): %s", err, bad)
			}
		})
	}
}

// TestSecondaryHiddenInPrimaryJSONArea: a primary copy whose binary header and
// checksum are sound but whose JSON is refused makes the reader use the secondary
// copy at the primary's header size, as cryptsetup does, never a copy planted at a
// smaller header size inside the primary's JSON area (which a scan of every
// possible offset would find first).
func TestSecondaryHiddenInPrimaryJSONArea(t *testing.T) {
	ctx := context.Background()
	const hs = 32 << 10
	o := crashFormatOpts()
	o.HeaderSize = hs
	o.UUID = "6a1c1c63-6d5c-4d1e-9a57-5d0f4f3c2b11"
	real := memFormat(t, crashSize, "real", o)

	// The planted copy: a 16 KiB secondary of another volume with the same UUID
	// and a higher seqid, unlocked by "fake".
	o2 := crashFormatOpts()
	o2.UUID = o.UUID
	fakeImg := memFormat(t, crashSize, "fake", o2)
	fv, fd := openMem(t, fakeImg, ReadWrite)
	for i := 0; i < 3; i++ {
		if err := fv.SetLabel("fake", ""); err != nil {
			t.Fatal(err)
		}
	}
	planted := fd.cur[DefaultHeaderSize : 2*DefaultHeaderSize]

	img := bytes.Clone(real)
	// The primary's JSON becomes something we refuse (a case-variant member that
	// json-c would read as a separate member), then the planted copy goes into the
	// unused tail of the primary's JSON area and the checksum is recomputed: an
	// offline edit needs no key.
	js := img[binHeaderSize:hs]
	end := bytes.IndexByte(js, 0)
	edited := strings.Replace(string(js[:end]), `"config":{`, `"Config":{},"config":{`, 1)
	if edited == string(js[:end]) {
		t.Fatal("edit did not apply")
	}
	clear(js)
	copy(js, edited)
	copy(img[DefaultHeaderSize:], planted)
	copy(img[offCsum:offCsum+lenCsum], make([]byte, lenCsum))
	copy(img[offCsum:], checksum("sha256", img[:hs]))

	v, _ := openMem(t, img, ReadOnly)
	md := v.Metadata()
	if md.HeaderSize != hs || md.Label == "fake" {
		t.Fatalf("read the planted copy: header size %d label %q", md.HeaderSize, md.Label)
	}
	if md.PrimaryValid || !md.SecondaryValid {
		t.Fatalf("primary valid %v secondary valid %v", md.PrimaryValid, md.SecondaryValid)
	}
	vk, _, err := v.Unlock(ctx, []byte("real"))
	if err != nil {
		t.Fatalf("real passphrase: %v", err)
	}
	vk.Wipe()
	if _, _, err := v.Unlock(ctx, []byte("fake")); !errors.Is(err, ErrNoKeyslotAccepts) {
		t.Fatalf("fake passphrase: %v", err)
	}
}

// editMeta replaces old with new in v's metadata and commits it (a header edited
// offline, with a valid checksum).
func editMeta(t *testing.T, v *Volume, edits ...string) {
	t.Helper()
	js := string(v.meta.encode())
	for i := 0; i < len(edits); i += 2 {
		if !strings.Contains(js, edits[i]) {
			t.Fatalf("%q not in %s", edits[i], js)
		}
		js = strings.Replace(js, edits[i], edits[i+1], 1)
	}
	m, err := parseMetadata([]byte(js), v.bin.hdrSize)
	if err != nil {
		t.Fatalf("edited metadata: %v", err)
	}
	if err := v.commit(m, v.bin.label, v.bin.subsystem); err != nil {
		t.Fatal(err)
	}
}

// TestCryptTargetHostileSegment: a data segment that does not fit the device (a
// fixed size past its end, or a "dynamic" one starting at or after it) gets a clear
// error from CryptTarget, not a table device-mapper would be asked to load.
func TestCryptTargetHostileSegment(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ name, size string }{
		{"fixed size past the end", `"size":"4194304"`},
		{"fixed size one sector past the end", `"size":"69632"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := openMem(t, memFormat(t, crashSize, "p", crashFormatOpts()), ReadWrite)
			editMeta(t, v, `"size":"dynamic"`, tc.size)
			vk, _, err := v.Unlock(ctx, []byte("p"))
			if err != nil {
				t.Fatal(err)
			}
			defer vk.Wipe()
			if ct, err := v.CryptTarget(vk); !errors.Is(err, ErrDeviceTooSmall) {
				t.Fatalf("CryptTarget = %+v, %v; want ErrDeviceTooSmall", ct, err)
			}
		})
	}
	t.Run("dynamic with no room", func(t *testing.T) {
		img := memFormat(t, crashSize, "p", crashFormatOpts())
		// The same header on a device that ends where the data would start.
		short := img[:crashDataOffset]
		v, err := OpenDevice(newMemDev(short, -1), int64(len(short)), ReadOnly)
		if err != nil {
			t.Fatal(err)
		}
		vk, _, err := v.Unlock(ctx, []byte("p"))
		if err != nil {
			t.Fatal(err)
		}
		defer vk.Wipe()
		if ct, err := v.CryptTarget(vk); !errors.Is(err, ErrDeviceTooSmall) {
			t.Fatalf("CryptTarget = %+v, %v; want ErrDeviceTooSmall", ct, err)
		}
	})
}

// TestSegmentDigestCostLimited: the digest that CryptTarget checks the key against
// (the data segment's) is held to the KDF limits like the keyslot's digest, and is
// refused with ErrKDFCost before any iteration when it asks for more.
func TestSegmentDigestCostLimited(t *testing.T) {
	ctx := context.Background()
	v, _ := openMem(t, memFormat(t, crashSize, "p", crashFormatOpts()), ReadWrite)
	js := string(v.meta.encode())
	i := strings.Index(js, `"digests":{"0":{`)
	j := strings.Index(js[i:], `"segments":["0"]`)
	if i < 0 || j < 0 {
		t.Fatalf("unexpected digests in %s", js)
	}
	// Digest 0 keeps the keyslot; a new digest 1 covers the segment at a cost
	// above the limit.
	editMeta(t, v, `"segments":["0"]`, `"segments":[]`,
		`"digests":{"0":{`, `"digests":{"1":{"type":"pbkdf2","keyslots":[],"segments":["0"],"hash":"sha256","iterations":2000000,"salt":"cKHvhLIvKoYxXk8uym0WqQ3ies/qhrr/FM7mozAQOPY=","digest":"hZe1DLC+Hj88iVCEuJSJfLyG9Sx5iG19iwIvkiiu3Nw="},"0":{`)
	v.SetKDFLimits(KDFLimits{MaxPBKDF2Iterations: 100000, MaxArgon2Time: 4, MaxArgon2MemoryKiB: 1 << 20, MaxArgon2Parallel: 4})
	vk, _, err := v.Unlock(ctx, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	if err := v.VerifyVolumeKey(vk); !errors.Is(err, ErrKDFCost) {
		t.Fatalf("VerifyVolumeKey: %v; want ErrKDFCost", err)
	}
	if _, err := v.CryptTarget(vk); !errors.Is(err, ErrKDFCost) {
		t.Fatalf("CryptTarget: %v; want ErrKDFCost", err)
	}
}
