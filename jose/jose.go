// Package jose holds the pieces of JOSE that clevis tokens need: parsing a JWE in
// compact (RFC 7516, 7.1) or flattened JSON serialization (RFC 7516, 7.2.2),
// decrypting a JWE whose key management is "dir" and whose content encryption is
// AES-GCM (RFC 7518, 4.5 and 5.3) with the protected header as additional
// authenticated data, and parsing a symmetric JWK (RFC 7517, RFC 7518 6.4).
//
// Only what is needed to read clevis's JWEs is implemented; nothing here encrypts.
package jose

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrUnsupported is returned for a JWE algorithm this package does not implement.
var ErrUnsupported = errors.New("jose: unsupported algorithm")

// maxJWE bounds the size of a JWE this package parses.
const maxJWE = 1 << 20

// JWE is a parsed JSON Web Encryption object.
type JWE struct {
	// ProtectedRaw is the BASE64URL text of the protected header, as used in AAD.
	ProtectedRaw string
	// Protected is the decoded protected header (a JSON object).
	Protected map[string]json.RawMessage
	// Unprotected is the shared unprotected header, if any (flattened only).
	Unprotected map[string]json.RawMessage
	// AADRaw is the BASE64URL text of the "aad" member, if any (flattened only).
	AADRaw string
	// EncryptedKey is the JWE Encrypted Key (empty for "dir").
	EncryptedKey []byte
	// IV is the initialization vector.
	IV []byte
	// Ciphertext is the encrypted content.
	Ciphertext []byte
	// Tag is the authentication tag.
	Tag []byte
}

func b64(s string) ([]byte, error) {
	// RFC 7515, 2: unpadded base64url. Tolerate padding, as jose(1) does.
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// Parse parses a JWE in either serialization: a JSON object (flattened) or the
// five-part compact form, possibly as a JSON string.
func Parse(b []byte) (*JWE, error) {
	b = bytes.TrimSpace(b)
	if len(b) > maxJWE {
		return nil, errors.New("jose: JWE too large")
	}
	if len(b) > 0 && b[0] == '{' {
		return ParseFlattened(b)
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("jose: JWE string: %w", err)
		}
		return ParseCompact(s)
	}
	return ParseCompact(string(b))
}

// ParseCompact parses the compact serialization
// BASE64URL(header).BASE64URL(key).BASE64URL(iv).BASE64URL(ciphertext).BASE64URL(tag).
func ParseCompact(s string) (*JWE, error) {
	if len(s) > maxJWE {
		return nil, errors.New("jose: JWE too large")
	}
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 5 {
		return nil, fmt.Errorf("jose: compact JWE has %d parts, want 5", len(parts))
	}
	return build(parts[0], nil, "", parts[1], parts[2], parts[3], parts[4])
}

type flattened struct {
	Protected    string                     `json:"protected"`
	Unprotected  map[string]json.RawMessage `json:"unprotected"`
	Header       map[string]json.RawMessage `json:"header"`
	AAD          string                     `json:"aad"`
	EncryptedKey string                     `json:"encrypted_key"`
	IV           string                     `json:"iv"`
	Ciphertext   string                     `json:"ciphertext"`
	Tag          string                     `json:"tag"`
	Recipients   json.RawMessage            `json:"recipients"`
}

// ParseFlattened parses the flattened JSON serialization (one recipient).
func ParseFlattened(b []byte) (*JWE, error) {
	if len(b) > maxJWE {
		return nil, errors.New("jose: JWE too large")
	}
	var f flattened
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("jose: JWE JSON: %w", err)
	}
	if len(f.Recipients) > 0 {
		return nil, fmt.Errorf("%w: general JSON serialization with recipients", ErrUnsupported)
	}
	unprot := f.Unprotected
	for k, v := range f.Header {
		if unprot == nil {
			unprot = map[string]json.RawMessage{}
		}
		unprot[k] = v
	}
	return build(f.Protected, unprot, f.AAD, f.EncryptedKey, f.IV, f.Ciphertext, f.Tag)
}

func build(prot string, unprot map[string]json.RawMessage, aad, ek, iv, ct, tag string) (*JWE, error) {
	j := &JWE{ProtectedRaw: prot, Unprotected: unprot, AADRaw: aad}
	if prot == "" {
		return nil, errors.New("jose: JWE has no protected header")
	}
	hdr, err := b64(prot)
	if err != nil {
		return nil, fmt.Errorf("jose: protected header: %w", err)
	}
	if err := json.Unmarshal(hdr, &j.Protected); err != nil {
		return nil, fmt.Errorf("jose: protected header JSON: %w", err)
	}
	if j.Protected == nil {
		return nil, errors.New("jose: protected header is not an object")
	}
	if aad != "" {
		if _, err := b64(aad); err != nil {
			return nil, fmt.Errorf("jose: aad: %w", err)
		}
	}
	for _, p := range []struct {
		name string
		in   string
		out  *[]byte
	}{{"encrypted_key", ek, &j.EncryptedKey}, {"iv", iv, &j.IV}, {"ciphertext", ct, &j.Ciphertext}, {"tag", tag, &j.Tag}} {
		if *p.out, err = b64(p.in); err != nil {
			return nil, fmt.Errorf("jose: %s: %w", p.name, err)
		}
	}
	return j, nil
}

// HeaderString returns a string member of the protected header (or, failing that,
// the unprotected header), or "" if absent or not a string.
func (j *JWE) HeaderString(name string) string {
	for _, h := range []map[string]json.RawMessage{j.Protected, j.Unprotected} {
		if raw, ok := h[name]; ok {
			var s string
			if json.Unmarshal(raw, &s) == nil {
				return s
			}
		}
	}
	return ""
}

// AAD returns the additional authenticated data of RFC 7516, 5.1 step 14:
// ASCII(BASE64URL(protected)), followed by "." and the aad member when present.
func (j *JWE) AAD() []byte {
	if j.AADRaw != "" {
		return []byte(j.ProtectedRaw + "." + j.AADRaw)
	}
	return []byte(j.ProtectedRaw)
}

// DecryptDir decrypts a JWE with "alg":"dir" using the content encryption key cek;
// "enc" must be A128GCM, A192GCM or A256GCM with a matching key size. The caller
// wipes the plaintext.
func (j *JWE) DecryptDir(cek []byte) ([]byte, error) {
	if alg := j.HeaderString("alg"); alg != "dir" {
		return nil, fmt.Errorf("%w: alg %q (want \"dir\")", ErrUnsupported, alg)
	}
	if len(j.EncryptedKey) != 0 {
		return nil, errors.New("jose: a \"dir\" JWE must have an empty encrypted key")
	}
	if zip := j.HeaderString("zip"); zip != "" {
		return nil, fmt.Errorf("%w: zip %q", ErrUnsupported, zip)
	}
	enc := j.HeaderString("enc")
	want := map[string]int{"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}[enc]
	if want == 0 {
		return nil, fmt.Errorf("%w: enc %q", ErrUnsupported, enc)
	}
	if len(cek) != want {
		return nil, fmt.Errorf("jose: %s needs a %d-byte key, the JWK has %d bytes", enc, want, len(cek))
	}
	if len(j.IV) != 12 || len(j.Tag) != 16 {
		return nil, errors.New("jose: AES-GCM needs a 96-bit IV and a 128-bit tag")
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("jose: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("jose: %w", err)
	}
	sealed := make([]byte, 0, len(j.Ciphertext)+len(j.Tag))
	sealed = append(append(sealed, j.Ciphertext...), j.Tag...)
	pt, err := gcm.Open(nil, j.IV, sealed, j.AAD())
	if err != nil {
		return nil, errors.New("jose: JWE authentication failed (wrong key or altered token)")
	}
	return pt, nil
}

// JWK is a JSON Web Key. Only the members this package uses are kept.
type JWK struct {
	// Kty is the key type ("oct" for symmetric keys).
	Kty string `json:"kty"`
	// Alg is the intended algorithm, if given.
	Alg string `json:"alg,omitempty"`
	// K is the BASE64URL symmetric key value.
	K string `json:"k,omitempty"`
}

// String never shows the key value.
func (k *JWK) String() string { return fmt.Sprintf("JWK{kty:%s alg:%s}", k.Kty, k.Alg) }

// MarshalJSON refuses to serialize a key.
func (k *JWK) MarshalJSON() ([]byte, error) {
	return nil, errors.New("jose: refusing to serialize a JWK")
}

// ParseJWK parses a JWK JSON object.
func ParseJWK(b []byte) (*JWK, error) {
	var k JWK
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, errors.New("jose: JWK is not valid JSON")
	}
	return &k, nil
}

// SymmetricKey returns the decoded "k" of an "oct" key. The caller wipes it.
func (k *JWK) SymmetricKey() ([]byte, error) {
	if k.Kty != "oct" {
		return nil, fmt.Errorf("%w: JWK kty %q (want \"oct\")", ErrUnsupported, k.Kty)
	}
	key, err := b64(k.K)
	if err != nil || len(key) == 0 {
		return nil, errors.New("jose: JWK \"k\" is not base64url")
	}
	return key, nil
}
