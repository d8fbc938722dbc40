package luks2

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

// cryptsetupJSON returns the JSON metadata of the header cryptsetup 2.6 wrote.
func cryptsetupJSON(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("testdata/cryptsetup-2.6-header.bin")
	if err != nil {
		t.Fatal(err)
	}
	js := b[binHeaderSize:DefaultHeaderSize]
	if i := bytes.IndexByte(js, 0); i >= 0 {
		js = js[:i]
	}
	return string(js)
}

// ambiguousJSONEdits turn cryptsetup's metadata into text that json-c (exact names,
// as cryptsetup reads it) and encoding/json (case-insensitive, last duplicate wins)
// would read differently, or that only one of them accepts.
var ambiguousJSONEdits = []struct {
	name, old, new string
}{
	{"case variant after the field", `"key_size":64,"af"`, `"key_size":64,"KEY_SIZE":32,"af"`},
	{"case variant before the field", `"key_size":64,"af"`, `"KEY_SIZE":32,"key_size":64,"af"`},
	{"lone case variant", `"type":"luks2","key_size":64`, `"type":"luks2","Key_Size":64`},
	{"exact duplicate", `"key_size":64,"af"`, `"key_size":64,"key_size":32,"af"`},
	{"unicode fold (long s)", `"salt":"AWKn`, `"ſalt":"AWKn`},
	{"unicode fold (kelvin)", `"key_size":64}`, `"\u212aey_size":64}`},
	{"nested area duplicate", `"encryption":"aes-xts-plain64","key_size":64}`, `"encryption":"aes-xts-plain64","key_size":64,"key_size":32}`},
	{"segment case variant", `"sector_size":4096`, `"sector_size":4096,"SECTOR_SIZE":512`},
	{"segment encryption variant", `"iv_tweak":"0","encryption":"aes-xts-plain64"`, `"iv_tweak":"0","encryption":"aes-xts-plain64","Encryption":"cipher_null-ecb"`},
	{"digest duplicate keyslots", `"keyslots":["0"],"segments"`, `"keyslots":["0"],"keyslots":[],"segments"`},
	{"token duplicate keyslots", `"keyslots":["0"],"blob"`, `"keyslots":["0"],"keyslots":[],"blob"`},
	{"token case variant keyslots", `"keyslots":["0"],"blob"`, `"keyslots":["0"],"KEYSLOTS":[],"blob"`},
	{"token unknown member duplicate", `"blob":"AAAA"`, `"blob":"AAAA","blob":"BBBB"`},
	{"token member case variant", `"pcrs":[7]`, `"pcrs":[7],"PCRS":[]`},
	{"config case variant", `"json_size":"12288"`, `"json_size":"12288","JSON_SIZE":"12288"`},
	{"top-level case variant", `"config":{`, `"Config":{},"config":{`},
	{"duplicate keyslot id", `"keyslots":{"0":{`, `"keyslots":{"0":{},"0":{`},
	{"duplicate section", `"tokens":{"0"`, `"tokens":{},"tokens":{"0"`},
}

// TestMetadataRejectsAmbiguousJSON: every edit above is refused with
// ErrInvalidMetadata, while the unedited text and harmless unknown members parse.
func TestMetadataRejectsAmbiguousJSON(t *testing.T) {
	orig := cryptsetupJSON(t)
	if _, err := parseMetadata([]byte(orig), DefaultHeaderSize); err != nil {
		t.Fatalf("cryptsetup's metadata: %v", err)
	}
	for _, tc := range ambiguousJSONEdits {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(orig, tc.old) {
				t.Fatalf("edit %q does not apply", tc.old)
			}
			js := strings.Replace(orig, tc.old, tc.new, 1)
			m, err := parseMetadata([]byte(js), DefaultHeaderSize)
			if err == nil {
				t.Fatalf("accepted %s; keyslot 0 key_size %d", js, m.keyslots[0].ks.KeySize)
			}
			if !errors.Is(err, ErrInvalidMetadata) && !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error %v is neither ErrInvalidMetadata nor ErrInvalidToken", err)
			}
			t.Logf("refused: %v", err)
		})
	}
	// Unknown members that are no case variant of a known one are kept.
	js := strings.Replace(orig, `"key_size":64,"af"`, `"key_size":64,"x-vendor":{"a":1,"b":2},"af"`, 1)
	if _, err := parseMetadata([]byte(js), DefaultHeaderSize); err != nil {
		t.Fatalf("unknown member refused: %v", err)
	}
}

// TestAddTokenRejectsAmbiguousJSON: token JSON given to AddToken is held to the
// same rules: its keyslots list decides which keyslot a token unlocks.
func TestAddTokenRejectsAmbiguousJSON(t *testing.T) {
	img := memFormat(t, crashSize, "pw", crashFormatOpts())
	v, err := OpenDevice(newMemDev(img, -1), crashSize, ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{
		`{"type":"x","keyslots":["0"],"keyslots":[]}`,
		`{"type":"x","keyslots":[],"KeySlots":["0"]}`,
		`{"type":"x","Type":"y","keyslots":["0"]}`,
		`{"type":"x","keyslots":["0"],"u":{"k":1,"k":2}}`,
	} {
		if _, err := v.AddToken([]byte(tok), AnyToken); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("AddToken(%s) = %v, want ErrInvalidToken", tok, err)
		}
	}
	if _, err := v.AddToken([]byte(`{"type":"x","keyslots":["0"],"u":{"k":1,"K":2}}`), AnyToken); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("token with members k and K: %v, want ErrInvalidToken", err)
	}
	if _, err := v.AddToken([]byte(`{"type":"x","keyslots":["0"],"u":{"k":1,"j":2}}`), AnyToken); err != nil {
		t.Errorf("free-form token member refused: %v", err)
	}
}

// TestDecodeStrict: token parsers outside luks2 get the same rules through
// DecodeStrict: the PCR list systemd reads is the one we read.
func TestDecodeStrict(t *testing.T) {
	type tok struct {
		Type string `json:"type"`
		PCRs []int  `json:"tpm2-pcrs"`
	}
	for _, tc := range []struct {
		js string
		ok bool
	}{
		{`{"type":"systemd-tpm2","tpm2-pcrs":[7]}`, true},
		{`{"type":"systemd-tpm2","tpm2-pcrs":[7],"TPM2-PCRS":[]}`, false},
		{`{"type":"systemd-tpm2","TPM2-PCRS":[]}`, false},
		{`{"type":"systemd-tpm2","tpm2-pcrs":[7],"tpm2-pcrs":[]}`, false},
	} {
		var v tok
		err := DecodeStrict([]byte(tc.js), &v)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidToken)) {
			t.Errorf("DecodeStrict(%s) = %v (%+v), want ok=%v", tc.js, err, v, tc.ok)
		}
	}
}
