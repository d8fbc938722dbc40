package tpm

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"testing"
)

func marshalToken(t *testing.T, tok map[string]any, slot int) []byte {
	t.Helper()
	m := map[string]any{"keyslots": []string{strconv.Itoa(slot)}}
	for k, v := range tok {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeB64(t *testing.T, b []byte) []byte {
	t.Helper()
	out, err := base64.StdEncoding.DecodeString(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func clevisTangToken(t *testing.T) []byte {
	t.Helper()
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ECDH-ES","enc":"A256GCM","clevis":{"pin":"tang","tang":{}}}`))
	b, _ := json.Marshal(map[string]any{"type": "clevis", "keyslots": []string{"1"},
		"jwe": map[string]string{"protected": hdr, "iv": "AAAAAAAAAAAAAAAA", "ciphertext": "", "tag": "AAAAAAAAAAAAAAAAAAAAAA", "encrypted_key": ""}})
	return b
}

func itoa(i int) string { return strconv.Itoa(i) }

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
