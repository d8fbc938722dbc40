package kms

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/unlock"
)

// FuzzParseToken: the token parser never panics, accepts only well-formed tokens,
// and what it accepts survives a rewrite (Map) unchanged, unknown members included.
func FuzzParseToken(f *testing.F) {
	// realWrap is the wrap token of docs/tokens.md.
	const realWrap = `{"type":"diskcryptd-kmip","keyslots":["1"],"version":1,"mode":"wrap","servers":["127.0.0.1:5696"],"kek_uid":"1","algorithm":"AES-256-GCM","iv":"IHhOXhclzr+O3VIv","tag":"ckAFA62JAfiyNDPS8q3sFQ==","wrapped_secret":"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeGM=","aad":"luks2-uuid,keyslot"}`
	f.Add([]byte(realWrap))
	f.Add([]byte(`{"type":"diskcryptd-kmip","keyslots":["1"],"version":1,"mode":"wrap","servers":["127.0.0.1:5696"],"kek_uid":"1","algorithm":"AES-256-GCM","iv":"IHhOXhclzr+O3VIv","tag":"ckAFA62JAfiyNDPS8q3sFQ==","wrapped_secret":"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeGM=","aad":"luks2-uuid,keyslot","x":{"y":[1]}}`))
	f.Add([]byte(`{"type":"diskcryptd-kmip","keyslots":["3"],"version":1,"mode":"get","servers":["kms1:5696","[::1]:5696"],"kek_uid":"2"}`))
	f.Add([]byte(`{"type":"systemd-tpm2"}`))
	f.Add([]byte(`{"type":"diskcryptd-kmip","version":1,"mode":"wrap","servers":[]}`))
	f.Add([]byte(strings.Replace(realWrap, `"kek_uid":"1"`, `"kek_uid":"1","KEK_UID":"2"`, 1)))
	f.Add([]byte(strings.Replace(realWrap, `"version":1`, `"version":2`, 1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseToken(b)
		if err != nil {
			if !errors.Is(err, ErrToken) && !errors.Is(err, unlock.ErrNotMine) {
				t.Fatalf("error wraps neither ErrToken nor ErrNotMine: %v", err)
			}
			return
		}
		// What is accepted is within bounds.
		if len(tok.Servers) == 0 || len(tok.Servers) > MaxServers || tok.KEKUID == "" || len(tok.KEKUID) > 256 ||
			(tok.Mode == ModeWrap && (len(tok.IV) != IVSize || len(tok.Tag) != TagSize || len(tok.Wrapped) != SecretSize)) {
			t.Fatalf("accepted a token out of bounds: %+v", tok)
		}
		again, err := json.Marshal(tok.Map())
		if err != nil {
			t.Fatal(err)
		}
		tok2, err := ParseToken(again)
		if err != nil {
			t.Fatalf("rewritten token does not parse: %v\n%s", err, again)
		}
		third, _ := json.Marshal(tok2.Map())
		if string(third) != string(again) {
			t.Fatalf("rewrite not stable:\n%s\n%s", again, third)
		}
		if len(tok2.Extra) != len(tok.Extra) {
			t.Fatalf("unknown members lost")
		}
	})
}
