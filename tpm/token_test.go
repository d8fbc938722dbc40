package tpm

import (
	"errors"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// TestParseSystemdTokenStrict: a token that json-c (systemd, cryptsetup) and
// encoding/json would read differently is refused, not read as the last duplicate.
func TestParseSystemdTokenStrict(t *testing.T) {
	const base = `"type":"systemd-tpm2","keyslots":["0"],"tpm2-blob":"AAAA","tpm2-policy-hash":"00","tpm2-pin":false`
	tests := []struct {
		name    string
		json    string
		wantErr error
		pcrs    []int
	}{
		{"plain", `{` + base + `,"tpm2-pcrs":[7]}`, nil, []int{7}},
		{"case variant of tpm2-pcrs", `{` + base + `,"tpm2-pcrs":[7],"TPM2-PCRS":[]}`, luks2.ErrInvalidToken, nil},
		{"duplicate tpm2-pcrs", `{` + base + `,"tpm2-pcrs":[7],"tpm2-pcrs":[]}`, luks2.ErrInvalidToken, nil},
		{"case variant only", `{` + base + `,"TPM2-PCRS":[]}`, luks2.ErrInvalidToken, nil},
		{"case variant of pubkey pcrs", `{` + base + `,"tpm2-pcrs":[7],"tpm2_pubkey_pcrs":[11],"TPM2_PUBKEY_PCRS":[]}`, luks2.ErrInvalidToken, nil},
		{"case variant of pin", `{` + base + `,"tpm2-pcrs":[7],"TPM2-PIN":true}`, luks2.ErrInvalidToken, nil},
		{"case variant of type", `{"Type":"systemd-tpm2","keyslots":["0"],"tpm2-blob":"AAAA","tpm2-pcrs":[7]}`, luks2.ErrInvalidToken, nil},
		{"duplicate type", `{"type":"clevis",` + base + `,"tpm2-pcrs":[7]}`, luks2.ErrInvalidToken, nil},
		{"other type", `{"type":"clevis","keyslots":["0"]}`, unlock.ErrNotMine, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseSystemdToken([]byte(tc.json))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ParseSystemdToken = %+v, %v; want %v", tok, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(tok.PCRs) != len(tc.pcrs) || (len(tc.pcrs) > 0 && tok.PCRs[0] != tc.pcrs[0]) {
				t.Fatalf("PCRs = %v, want %v", tok.PCRs, tc.pcrs)
			}
		})
	}
}

// FuzzParseSystemdToken: no panic on any token JSON, and whatever parses has no
// repeated or case-variant members.
func FuzzParseSystemdToken(f *testing.F) {
	f.Add([]byte(`{"type":"systemd-tpm2","keyslots":["0"],"tpm2-blob":"AAAA","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"00","tpm2-pin":false}`))
	f.Add([]byte(`{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AAAA","tpm2-pcrs":[],"tpm2_pubkey_pcrs":[11],"tpm2_pubkey":"AAAA","tpm2-policy-hash":"00","tpm2-pin":true,"tpm2_salt":"AAAA"}`))
	f.Add([]byte(`{"type":"systemd-tpm2","tpm2-pcrs":[7],"TPM2-PCRS":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseSystemdToken(b)
		if err != nil {
			return
		}
		if tok.Blob == "" {
			t.Fatal("parsed a token without tpm2-blob")
		}
		if strings.Count(strings.ToLower(string(b)), `"tpm2-pcrs"`) > 1 {
			t.Fatalf("parsed a token with two tpm2-pcrs members: %s", b)
		}
	})
}
