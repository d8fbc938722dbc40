package clevis

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestParseTokenStrict: the clevis LUKS2 token is read as cryptsetup's json-c reads
// it. A real token (written by `clevis luks bind`) parses; the same token with its
// "keyslots" member renamed by case, or repeated, is refused, where encoding/json
// alone would have matched "KEYSLOTS" to keyslots or taken the last duplicate.
func TestParseTokenStrict(t *testing.T) {
	raw, err := os.ReadFile("testdata/clevis-tang-token.json")
	if err != nil {
		t.Fatal(err)
	}
	good := string(raw)
	if _, err := ParseToken(raw); err != nil {
		t.Fatalf("real token: %v", err)
	}
	if !strings.Contains(good, `"keyslots":`) {
		t.Fatalf("fixture has no keyslots member: %s", good)
	}
	for name, tok := range map[string]string{
		"case variant": strings.Replace(good, `"keyslots":`, `"KEYSLOTS":`, 1),
		"duplicate":    strings.Replace(good, `"keyslots":`, `"keyslots":["7"],"keyslots":`, 1),
	} {
		if _, err := ParseToken([]byte(tok)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}
