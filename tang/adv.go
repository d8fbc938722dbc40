package tang

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// ErrAdv is wrapped by every error about a malformed or unverifiable advertisement.
var ErrAdv = errors.New("tang: bad advertisement")

// ErrUntrusted is returned when no signing key of an advertisement is trusted.
var ErrUntrusted = errors.New("tang: advertisement not signed by a trusted key")

// maxAdv bounds an advertisement (a real one is about 1.5 KiB).
const maxAdv = 64 << 10

// maxKeys bounds the keys of an advertisement (tangd advertises two per active key
// pair, and keeps rotated-out keys out of /adv): every signing key's signature is
// checked against each of the JWS's signatures (go-jose allows 32), so 64 KiB of
// small P-256 keys would otherwise cost thousands of ECDSA verifications.
const maxKeys = 16

// signingAlgs is the allow-list of advertisement signature algorithms.
var signingAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512}

// Key is one key of an advertisement.
type Key struct {
	// JWK is the public key.
	JWK jose.JSONWebKey
	// Ops is the JWK "key_ops" member.
	Ops []string
	// Raw is the key's JSON as advertised.
	Raw json.RawMessage
}

// Public returns the key as an ECDSA public key (every Tang key is on a NIST curve).
func (k *Key) Public() *ecdsa.PublicKey {
	p, _ := k.JWK.Key.(*ecdsa.PublicKey)
	return p
}

// Thumbprint returns the key's RFC 7638 thumbprint with hash (crypto.SHA256 as clevis
// makes them by default, crypto.SHA1 for older bindings), base64url without padding.
func (k *Key) Thumbprint(hash crypto.Hash) string {
	b, err := k.JWK.Thumbprint(hash)
	if err != nil {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Matches reports whether thp is the key's SHA-256 or SHA-1 thumbprint.
func (k *Key) Matches(thp string) bool {
	return thp != "" && (k.Thumbprint(crypto.SHA256) == thp || k.Thumbprint(crypto.SHA1) == thp)
}

// Adv is a verified advertisement.
type Adv struct {
	// JWKS is the payload, the JWK Set exactly as signed: clevis stores it in its
	// tokens as "clevis"."tang"."adv".
	JWKS json.RawMessage
	// Signing are the keys whose key_ops include "verify".
	Signing []Key
	// Exchange are the keys whose key_ops include "deriveKey".
	Exchange []Key
	// ExtraSigners are keys outside the payload (from ParseAdv's extra) whose
	// signature was also valid: the key named in GET /adv/{thp}, even if rotated out.
	ExtraSigners []*Key
}

// ParseKeys parses a JWK Set of Tang keys (an advertisement's payload, or the "adv"
// clevis stores in a token) without checking any signature.
func ParseKeys(jwks []byte) (*Adv, error) {
	if len(jwks) > maxAdv {
		return nil, fmt.Errorf("%w: %d bytes", ErrAdv, len(jwks))
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil {
		return nil, fmt.Errorf("%w: key set: %v", ErrAdv, err)
	}
	if len(set.Keys) > maxKeys {
		return nil, fmt.Errorf("%w: %d keys (at most %d)", ErrAdv, len(set.Keys), maxKeys)
	}
	a := &Adv{JWKS: append(json.RawMessage(nil), jwks...)}
	for i, raw := range set.Keys {
		k, err := parseKey(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: key %d: %v", ErrAdv, i, err)
		}
		if slices.Contains(k.Ops, "verify") {
			a.Signing = append(a.Signing, *k)
		}
		if slices.Contains(k.Ops, "deriveKey") {
			a.Exchange = append(a.Exchange, *k)
		}
	}
	if len(a.Signing) == 0 {
		return nil, fmt.Errorf("%w: no signing key", ErrAdv)
	}
	if len(a.Exchange) == 0 {
		return nil, fmt.Errorf("%w: no exchange key", ErrAdv)
	}
	return a, nil
}

func parseKey(raw json.RawMessage) (*Key, error) {
	var meta struct {
		Kty string   `json:"kty"`
		Ops []string `json:"key_ops"`
		D   string   `json:"d"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, err
	}
	if meta.Kty != "EC" {
		return nil, fmt.Errorf("kty %q, want EC", meta.Kty)
	}
	if meta.D != "" {
		return nil, errors.New("advertised key carries a private part")
	}
	k := &Key{Ops: meta.Ops, Raw: append(json.RawMessage(nil), raw...)}
	if err := k.JWK.UnmarshalJSON(raw); err != nil {
		return nil, err
	}
	pub, ok := k.JWK.Key.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("not an EC public key")
	}
	switch pub.Curve {
	case elliptic.P256(), elliptic.P384(), elliptic.P521():
	default:
		return nil, errors.New("unsupported curve")
	}
	return k, nil
}

// ParseAdv parses an advertisement (the body of GET /adv) and verifies that every
// signing key of its payload signed it. Signatures by other keys are checked against
// extra, if given (keys a caller already trusts but the server no longer advertises).
func ParseAdv(body []byte, extra ...Key) (*Adv, error) {
	if len(body) > maxAdv {
		return nil, fmt.Errorf("%w: %d bytes", ErrAdv, len(body))
	}
	jws, err := jose.ParseSigned(string(body), signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAdv, err)
	}
	payload := jws.UnsafePayloadWithoutVerification()
	a, err := ParseKeys(payload)
	if err != nil {
		return nil, err
	}
	for _, k := range a.Signing {
		if _, _, _, err := jws.VerifyMulti(k.Public()); err != nil {
			return nil, fmt.Errorf("%w: signing key %s did not sign it", ErrAdv, k.Thumbprint(crypto.SHA256))
		}
	}
	for i := range extra {
		if _, _, _, err := jws.VerifyMulti(extra[i].Public()); err == nil {
			a.ExtraSigners = append(a.ExtraSigners, &extra[i])
		}
	}
	return a, nil
}

// SignedBy returns the signing key (in the payload, or among the extra signers) whose
// thumbprint is thp, or nil.
func (a *Adv) SignedBy(thp string) *Key {
	for i := range a.Signing {
		if a.Signing[i].Matches(thp) {
			return &a.Signing[i]
		}
	}
	for _, k := range a.ExtraSigners {
		if k.Matches(thp) {
			return k
		}
	}
	return nil
}

// SigningThumbprints returns the SHA-256 thumbprints of the signing keys, for an
// operator to compare with the server's (tang-show-keys, or jose jwk thp).
func (a *Adv) SigningThumbprints() []string {
	out := make([]string, len(a.Signing))
	for i := range a.Signing {
		out[i] = a.Signing[i].Thumbprint(crypto.SHA256)
	}
	return out
}

// ExchangeKey returns the exchange key whose thumbprint (SHA-256 or SHA-1) is kid,
// or, with kid "", the first one.
func (a *Adv) ExchangeKey(kid string) (*Key, error) {
	for i := range a.Exchange {
		if kid == "" || a.Exchange[i].Matches(kid) {
			return &a.Exchange[i], nil
		}
	}
	return nil, fmt.Errorf("%w: no exchange key %q", ErrAdv, kid)
}

// trimURL drops trailing slashes from a server URL, as clevis's url is joined with
// "/adv" and "/rec/KID".
func trimURL(u string) string { return strings.TrimRight(u, "/") }
