package jose

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
)

var e = base64.RawURLEncoding.EncodeToString

// makeJWE encrypts pt as a "dir"/A256GCM JWE (test-only encryption).
func makeJWE(t testing.TB, key, pt []byte, hdr string) (compact string, flat []byte) {
	prot := e([]byte(hdr))
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	iv := bytes.Repeat([]byte{7}, 12)
	out := gcm.Seal(nil, iv, pt, []byte(prot))
	ct, tag := out[:len(pt)], out[len(pt):]
	compact = prot + ".." + e(iv) + "." + e(ct) + "." + e(tag)
	flat, _ = json.Marshal(map[string]string{"protected": prot, "encrypted_key": "", "iv": e(iv), "ciphertext": e(ct), "tag": e(tag)})
	return compact, flat
}

func TestDecryptDir(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	pt := []byte("keyslot passphrase")
	compact, flat := makeJWE(t, key, pt, `{"alg":"dir","enc":"A256GCM","clevis":{"pin":"tpm2"}}`)
	jwk, _ := json.Marshal(map[string]string{"kty": "oct", "alg": "A256GCM", "k": e(key)})
	for _, tc := range []struct {
		name    string
		in      []byte
		key     []byte
		wantErr bool
	}{
		{"compact", []byte(compact), key, false},
		{"compact as JSON string", []byte(`"` + compact + `"`), key, false},
		{"flattened", flat, key, false},
		{"wrong key", flat, bytes.Repeat([]byte{2}, 32), true},
		{"short key", flat, key[:16], true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := j.DecryptDir(tc.key)
			if tc.wantErr {
				if err == nil {
					t.Fatal("decrypted with a wrong key")
				}
				return
			}
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	k, err := ParseJWK(jwk)
	if err != nil {
		t.Fatal(err)
	}
	if sk, err := k.SymmetricKey(); err != nil || !bytes.Equal(sk, key) {
		t.Fatalf("JWK key: %v", err)
	}
	if _, err := json.Marshal(k); err == nil {
		t.Fatal("JWK serialized")
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", "a.b.c", "{}", `{"protected":"!!"}`, "e30.....", `{"recipients":[{}],"protected":"e30"}`} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
	_, flat := makeJWE(t, make([]byte, 32), []byte("x"), `{"alg":"ECDH-ES","enc":"A256GCM"}`)
	j, err := Parse(flat)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.DecryptDir(make([]byte, 32)); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("got %v, want ErrUnsupported", err)
	}
}

func FuzzParseJWE(f *testing.F) {
	compact, flat := makeJWE(f, make([]byte, 32), []byte("seed"), `{"alg":"dir","enc":"A256GCM"}`)
	f.Add([]byte(compact))
	f.Add(flat)
	f.Add([]byte(`"` + compact + `"`))
	f.Fuzz(func(t *testing.T, in []byte) {
		j, err := Parse(in)
		if err != nil {
			return
		}
		_ = j.HeaderString("alg")
		_, _ = j.DecryptDir(make([]byte, 32))
	})
}
