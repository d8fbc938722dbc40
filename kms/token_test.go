package kms_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/kms"
)

// goodWrap is a well-formed wrap token; the cases below edit its text.
const goodWrap = `{"type":"diskcryptd-kmip","keyslots":["1"],"version":1,"mode":"wrap","servers":["127.0.0.1:5696"],"kek_uid":"1","algorithm":"AES-256-GCM","iv":"IHhOXhclzr+O3VIv","tag":"ckAFA62JAfiyNDPS8q3sFQ==","wrapped_secret":"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeGM=","aad":"luks2-uuid,keyslot"}`

// TestParseTokenStrict: the parser reads what cryptsetup's json-c reads (no
// repeated or case-variant members), bounds every field, and names an unknown format
// version plainly.
func TestParseTokenStrict(t *testing.T) {
	if _, err := kms.ParseToken([]byte(goodWrap)); err != nil {
		t.Fatalf("the good token: %v", err)
	}
	sub := func(old, new string) string {
		if !strings.Contains(goodWrap, old) {
			t.Fatalf("%q not in the token", old)
		}
		return strings.Replace(goodWrap, old, new, 1)
	}
	servers := func(n int) string {
		s := make([]string, n)
		for i := range s {
			s[i] = `"10.0.0.1:5696"`
		}
		return sub(`"servers":["127.0.0.1:5696"]`, `"servers":[`+strings.Join(s, ",")+`]`)
	}
	for _, c := range []struct {
		name, tok, want string
	}{
		{"repeated kek_uid", sub(`"kek_uid":"1"`, `"kek_uid":"1","kek_uid":"2"`), "duplicate"},
		{"case-variant kek_uid", sub(`"kek_uid":"1"`, `"kek_uid":"1","KEK_UID":"2"`), ""},
		{"case-variant only", sub(`"kek_uid":"1"`, `"Kek_Uid":"1"`), ""},
		{"case-variant wrapped_secret", sub(`"wrapped_secret"`, `"Wrapped_Secret"`), ""},
		{"version 2", sub(`"version":1`, `"version":2`), "format version 2 is not supported"},
		{"no version", sub(`"version":1,`, ``), "no format version"},
		{"version as text", sub(`"version":1`, `"version":"1"`), ""},
		{"iv 11 bytes", sub(`"IHhOXhclzr+O3VIv"`, `"IHhOXhclzr+O3VI="`), "iv"},
		{"iv 13 bytes", sub(`"IHhOXhclzr+O3VIv"`, `"IHhOXhclzr+O3VIvAA=="`), "iv"},
		{"tag 15 bytes", sub(`"ckAFA62JAfiyNDPS8q3sFQ=="`, `"ckAFA62JAfiyNDPS8q3s"`), "tag"},
		{"tag not canonical", sub(`"ckAFA62JAfiyNDPS8q3sFQ=="`, `"ckAFA62JAfiyNDPS8q3sFR=="`), "tag"},
		{"wrapped 31 bytes", sub(`"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeGM="`, `"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeA=="`), "wrapped_secret"},
		{"wrapped 33 bytes", sub(`"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeGM="`, `"mAd5QV7DMz+TVlL8keF4UzcdEhQM+EUJ7UBXLYaWeGMA"`), "wrapped_secret"},
		{"17 servers", servers(17), "17 servers"},
		{"server with a newline", sub(`"127.0.0.1:5696"`, `"127.0.0.1:5696\nfake log line x:1"`), "HOST:PORT"},
		{"server of 1000 characters", sub(`"127.0.0.1:5696"`, `"`+strings.Repeat("a", 1000)+`:5696"`), "HOST:PORT"},
		{"kek_uid with an escape", sub(`"kek_uid":"1"`, `"kek_uid":"1\u001b[2J"`), "kek_uid"},
		{"kek_uid too long", sub(`"kek_uid":"1"`, `"kek_uid":"`+strings.Repeat("1", 300)+`"`), "kek_uid"},
		{"keyslot 01", sub(`["1"]`, `["01"]`), "keyslot"},
		{"get mode with an iv", strings.Replace(sub(`"mode":"wrap"`, `"mode":"get"`), `,"algorithm":"AES-256-GCM"`, ``, 1), "get mode"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok, err := kms.ParseToken([]byte(c.tok))
			if err == nil {
				t.Fatalf("accepted: kek %q servers %q", tok.KEKUID, tok.Servers)
			}
			t.Logf("%v", err)
			if !errors.Is(err, kms.ErrToken) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("want ErrToken saying %q: %v", c.want, err)
			}
		})
	}
	if _, err := kms.ParseServers(strings.Repeat("10.0.0.1:1,", kms.MaxServers+1)); err == nil {
		t.Errorf("--kmip-server with %d servers accepted", kms.MaxServers+1)
	}
}

// TestAADUnambiguous: the AAD names one volume and one keyslot; a UUID that is not
// canonical (a separator, invalid UTF-8 that case folding would merge, another
// length) is refused, never folded into another volume's AAD.
func TestAADUnambiguous(t *testing.T) {
	const u = "5c1d6a3e-1111-4c43-9d2e-6f1f2a3b4c5d"
	for _, bad := range []string{"", "other", u + "\x001", u[:35] + "\x00", "\xff" + u[1:], "\xfe" + u[1:], u + "0", "5c1d6a3e11114c439d2e6f1f2a3b4c5d", "5c1d6a3e-1111-4c43-9d2e-6f1f2a3b4c5g"} {
		if aad, err := kms.AAD(bad, 1); err == nil {
			t.Errorf("UUID %q accepted: AAD %q", bad, aad)
		} else if !errors.Is(err, kms.ErrVolumeUUID) {
			t.Errorf("UUID %q: %v", bad, err)
		}
	}
	for _, slot := range []int{-1, 32} {
		if _, err := kms.AAD(u, slot); err == nil {
			t.Errorf("keyslot %d accepted", slot)
		}
	}
	seen := map[string]string{}
	for _, uuid := range []string{u, "5c1d6a3e-1111-4c43-9d2e-6f1f2a3b4c5e", "0e3f6c1e-5a7b-4c43-9d2e-6f1f2a3b4c5d"} {
		for slot := 0; slot < 32; slot++ {
			aad, err := kms.AAD(uuid, slot)
			if err != nil {
				t.Fatal(err)
			}
			who := uuid + "/" + strconv.Itoa(slot)
			if other, dup := seen[string(aad)]; dup {
				t.Errorf("%s and %s share the AAD %q", who, other, aad)
			}
			seen[string(aad)] = who
		}
	}
	// The same UUID in upper case is the same volume (RFC 9562 compares UUIDs
	// ignoring case).
	a, _ := kms.AAD(u, 3)
	b, _ := kms.AAD(strings.ToUpper(u), 3)
	if string(a) != string(b) {
		t.Errorf("upper-case UUID gives another AAD")
	}
}
