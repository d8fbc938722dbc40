package clevis

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
)

// Limits on what Parse accepts.
const (
	// MaxToken bounds a token's JSON (a two-server sss token is about 12 KiB).
	MaxToken = 256 << 10
	// MaxDepth bounds the nesting of sss pins.
	MaxDepth = 4
	// MaxShares bounds the shares of one sss pin.
	MaxShares = 32
)

// TokenType is the LUKS2 token type clevis writes.
const TokenType = "clevis"

// ErrMalformed is wrapped by every error about a token or JWE that does not parse
// or violates the limits above.
var ErrMalformed = errors.New("clevis: malformed token")

// Allow-lists of JWE algorithms: what clevis's pins write.
var (
	keyAlgs     = []jose.KeyAlgorithm{jose.DIRECT, jose.ECDH_ES}
	contentAlgs = []jose.ContentEncryption{jose.A128GCM, jose.A192GCM, jose.A256GCM}
)

// TangHeader is "clevis"."tang" of a tang JWE.
type TangHeader struct {
	// URL is the Tang server's base URL.
	URL string `json:"url"`
	// Adv is the server's advertised key set at binding time.
	Adv json.RawMessage `json:"adv"`
}

// SSSHeader is "clevis"."sss" of an sss JWE.
type SSSHeader struct {
	// T is the threshold.
	T int `json:"t"`
	// P is the prime, base64url.
	P string `json:"p"`
	// JWE are the shares' compact JWEs.
	JWE []string `json:"jwe"`
}

// Header is the "clevis" member of a JWE's protected header.
type Header struct {
	// Pin is "tang", "tpm2" or "sss".
	Pin string `json:"pin"`
	// Tang is set for the tang pin.
	Tang *TangHeader `json:"tang,omitempty"`
	// TPM2 is set for the tpm2 pin.
	TPM2 *tpm.ClevisTPM2 `json:"tpm2,omitempty"`
	// SSS is set for the sss pin.
	SSS *SSSHeader `json:"sss,omitempty"`
}

// JWE is a parsed clevis JWE: go-jose's object, its clevis header, and for sss its
// parsed children.
type JWE struct {
	obj *jose.JSONWebEncryption
	// Clevis is the clevis header.
	Clevis Header
	// KeyID is the "kid" header (tang: the exchange key's thumbprint).
	KeyID string
	// Children are the parsed shares of an sss pin, in order.
	Children []*JWE
}

// Pin returns the JWE's pin name.
func (j *JWE) Pin() string { return j.Clevis.Pin }

// ParseJWE parses a clevis JWE in the flattened JSON serialization, the compact
// serialization, or the compact one as a JSON string.
func ParseJWE(b []byte) (*JWE, error) { return parseJWE(b, 0) }

func parseJWE(b []byte, depth int) (*JWE, error) {
	b = bytes.TrimSpace(b)
	if len(b) > MaxToken {
		return nil, fmt.Errorf("%w: JWE of %d bytes (at most %d)", ErrMalformed, len(b), MaxToken)
	}
	if depth > MaxDepth {
		return nil, fmt.Errorf("%w: sss nested deeper than %d", ErrMalformed, MaxDepth)
	}
	var (
		obj *jose.JSONWebEncryption
		err error
	)
	switch {
	case len(b) > 0 && b[0] == '{':
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(b, &probe); err != nil {
			return nil, fmt.Errorf("%w: JWE JSON: %v", ErrMalformed, err)
		}
		for _, k := range []string{"unprotected", "header", "recipients", "aad"} {
			if _, ok := probe[k]; ok {
				return nil, fmt.Errorf("%w: JWE has %q (clevis writes only a protected header)", ErrMalformed, k)
			}
		}
		obj, err = jose.ParseEncryptedJSON(string(b), keyAlgs, contentAlgs)
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("%w: JWE string: %v", ErrMalformed, err)
		}
		obj, err = jose.ParseEncryptedCompact(s, keyAlgs, contentAlgs)
	default:
		obj, err = jose.ParseEncryptedCompact(string(b), keyAlgs, contentAlgs)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// clevis never compresses: a "zip" header would make go-jose inflate the plaintext
	// (up to 250 kB from a few hundred bytes of token) before any key check of ours,
	// and "crit" names extensions we do not implement.
	for _, k := range []jose.HeaderKey{"zip", "crit"} {
		if _, ok := obj.Header.ExtraHeaders[k]; ok {
			return nil, fmt.Errorf("%w: JWE has %q (clevis does not write it)", ErrMalformed, k)
		}
	}
	j := &JWE{obj: obj, KeyID: obj.Header.KeyID}
	raw, ok := obj.Header.ExtraHeaders["clevis"]
	if !ok {
		return nil, fmt.Errorf("%w: JWE has no \"clevis\" header", ErrMalformed)
	}
	hb, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: clevis header: %v", ErrMalformed, err)
	}
	if err := unmarshalHeader(hb, &j.Clevis); err != nil {
		return nil, fmt.Errorf("%w: clevis header: %v", ErrMalformed, err)
	}
	alg := jose.KeyAlgorithm(obj.Header.Algorithm)
	switch j.Clevis.Pin {
	case "tang":
		if alg != jose.ECDH_ES {
			return nil, fmt.Errorf("%w: tang pin with alg %q (want ECDH-ES)", ErrMalformed, alg)
		}
		if j.Clevis.Tang == nil || j.Clevis.Tang.URL == "" || len(j.Clevis.Tang.Adv) == 0 {
			return nil, fmt.Errorf("%w: tang pin without url or adv", ErrMalformed)
		}
		if j.KeyID == "" {
			return nil, fmt.Errorf("%w: tang pin without kid", ErrMalformed)
		}
	case "tpm2":
		if alg != jose.DIRECT {
			return nil, fmt.Errorf("%w: tpm2 pin with alg %q (want dir)", ErrMalformed, alg)
		}
		if j.Clevis.TPM2 == nil {
			return nil, fmt.Errorf("%w: tpm2 pin without its header", ErrMalformed)
		}
	case "sss":
		if alg != jose.DIRECT {
			return nil, fmt.Errorf("%w: sss pin with alg %q (want dir)", ErrMalformed, alg)
		}
		s := j.Clevis.SSS
		if s == nil {
			return nil, fmt.Errorf("%w: sss pin without its header", ErrMalformed)
		}
		if _, err := parsePrime(s.P); err != nil {
			return nil, err
		}
		n := len(s.JWE)
		if n == 0 || n > MaxShares {
			return nil, fmt.Errorf("%w: sss with %d shares (1 to %d)", ErrMalformed, n, MaxShares)
		}
		if s.T < 1 || s.T > n {
			return nil, fmt.Errorf("%w: sss threshold t=%d with %d shares (need 1 <= t <= n)", ErrMalformed, s.T, n)
		}
		for i, c := range s.JWE {
			child, err := parseJWE([]byte(c), depth+1)
			if err != nil {
				return nil, fmt.Errorf("sss share %d: %w", i, err)
			}
			j.Children = append(j.Children, child)
		}
	default:
		return nil, fmt.Errorf("%w: unknown pin %q", ErrMalformed, j.Clevis.Pin)
	}
	return j, nil
}

// unmarshalHeader parses the clevis header; pcr_ids may be a string (as clevis
// writes) or an array of numbers.
func unmarshalHeader(b []byte, h *Header) error {
	var loose struct {
		Pin  string          `json:"pin"`
		Tang *TangHeader     `json:"tang"`
		TPM2 json.RawMessage `json:"tpm2"`
		SSS  *SSSHeader      `json:"sss"`
	}
	if err := json.Unmarshal(b, &loose); err != nil {
		return err
	}
	h.Pin, h.Tang, h.SSS = loose.Pin, loose.Tang, loose.SSS
	if len(loose.TPM2) == 0 || string(loose.TPM2) == "null" {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(loose.TPM2, &m); err != nil {
		return err
	}
	if ids, ok := m["pcr_ids"]; ok && len(ids) > 0 && ids[0] == '[' {
		var nums []json.Number
		if err := json.Unmarshal(ids, &nums); err != nil {
			return fmt.Errorf("pcr_ids: %v", err)
		}
		s := make([]string, len(nums))
		for i, n := range nums {
			s[i] = n.String()
		}
		m["pcr_ids"], _ = json.Marshal(strings.Join(s, ","))
	}
	fixed, _ := json.Marshal(m)
	h.TPM2 = new(tpm.ClevisTPM2)
	return json.Unmarshal(fixed, h.TPM2)
}

// Token is a parsed clevis LUKS2 token.
type Token struct {
	// Keyslots are the keyslots the token is bound to.
	Keyslots []int
	// JWE is the token's JWE.
	JWE *JWE
}

// ParseToken parses a LUKS2 token object of type "clevis".
func ParseToken(b []byte) (*Token, error) {
	if len(b) > MaxToken {
		return nil, fmt.Errorf("%w: token of %d bytes (at most %d)", ErrMalformed, len(b), MaxToken)
	}
	var t struct {
		Type     string          `json:"type"`
		Keyslots []string        `json:"keyslots"`
		JWE      json.RawMessage `json:"jwe"`
	}
	// Strict: cryptsetup (json-c) matches member names exactly, so a "Keyslots" beside
	// or instead of "keyslots" must not make us read other keyslots than it does.
	if err := luks2.DecodeStrict(b, &t); err != nil {
		return nil, fmt.Errorf("%w: token JSON: %w", ErrMalformed, err)
	}
	if t.Type != TokenType {
		return nil, fmt.Errorf("%w: token type %q", ErrMalformed, t.Type)
	}
	if len(t.JWE) == 0 {
		return nil, fmt.Errorf("%w: token has no jwe", ErrMalformed)
	}
	tok := &Token{}
	for _, s := range t.Keyslots {
		var n int
		if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != s {
			return nil, fmt.Errorf("%w: keyslot %q", ErrMalformed, s)
		}
		tok.Keyslots = append(tok.Keyslots, n)
	}
	j, err := ParseJWE(t.JWE)
	if err != nil {
		return nil, err
	}
	tok.JWE = j
	return tok, nil
}

// Flattened turns a compact JWE into the flattened JSON object "jose jwe fmt" writes
// into clevis's LUKS2 tokens.
func Flattened(compact string) (map[string]any, error) {
	p := strings.Split(compact, ".")
	if len(p) != 5 {
		return nil, fmt.Errorf("%w: compact JWE has %d parts", ErrMalformed, len(p))
	}
	return map[string]any{"protected": p[0], "encrypted_key": p[1], "iv": p[2], "ciphertext": p[3], "tag": p[4]}, nil
}

// TokenJSON returns the LUKS2 token object for a compact JWE, without "keyslots"
// (the caller adds it when it knows the keyslot).
func TokenJSON(compact string) (map[string]any, error) {
	f, err := Flattened(compact)
	if err != nil {
		return nil, err
	}
	return map[string]any{"type": TokenType, "jwe": f}, nil
}
