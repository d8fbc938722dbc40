package luks2

import (
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
