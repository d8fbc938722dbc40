package kms

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/diskcryptd/diskcryptd/unlock"
)

// TokenType is the LUKS2 token type of a KMIP protector.
const TokenType = "diskcryptd-kmip"

// FormatVersion is the token format this package writes; it reads this version only.
const FormatVersion = 1

// Modes of a token.
const (
	// ModeWrap: the keyslot secret is encrypted by the KEK inside the KMS (KMIP
	// Encrypt/Decrypt, AES-256-GCM); the KEK never leaves the KMS.
	ModeWrap = "wrap"
	// ModeGet: the keyslot secret is itself a 32-byte object in the KMS (SecretData or
	// a symmetric key), fetched with KMIP Get; for key managers without server-side
	// encryption.
	ModeGet = "get"
)

// AlgAES256GCM is the only wrap algorithm: AES-256 in GCM mode, 12-byte IV, 16-byte tag.
const AlgAES256GCM = "AES-256-GCM"

// AADRecipe names how the additional authenticated data of a wrap token is built:
// the volume's LUKS2 UUID and the keyslot number the token is bound to (see AAD).
const AADRecipe = "luks2-uuid,keyslot"

// Sizes of the wrap mode's values.
const (
	SecretSize = 32
	IVSize     = 12
	TagSize    = 16
)

// ErrToken is wrapped by every error about a malformed diskcryptd-kmip token.
var ErrToken = errors.New("kms: malformed diskcryptd-kmip token")

// Token is a "diskcryptd-kmip" LUKS2 token (documented in docs/tokens.md). Members
// this version does not know are kept in Extra and written back on rewrite.
type Token struct {
	// Version is "version", the token format version (FormatVersion).
	Version int
	// Mode is "mode": ModeWrap or ModeGet.
	Mode string
	// Servers is "servers": KMIP servers as HOST:PORT, tried in order.
	Servers []string
	// KEKUID is "kek_uid": the KMIP unique identifier of the KEK (wrap) or of the
	// secret object (get).
	KEKUID string
	// Algorithm is "algorithm" (wrap only): AlgAES256GCM.
	Algorithm string
	// IV, Tag and Wrapped are "iv", "tag" and "wrapped_secret" (wrap only, base64):
	// the GCM nonce, the authentication tag and the encrypted 32-byte secret.
	IV, Tag, Wrapped []byte
	// AAD is "aad" (wrap only): the recipe of the additional authenticated data,
	// AADRecipe.
	AAD string
	// Keyslots are the token's keyslots (the LUKS2 "keyslots" member).
	Keyslots []int
	// Extra holds members this version does not know, kept verbatim.
	Extra map[string]json.RawMessage
}

// known are the members Token models.
var known = map[string]bool{"type": true, "keyslots": true, "version": true, "mode": true, "servers": true,
	"kek_uid": true, "algorithm": true, "iv": true, "tag": true, "wrapped_secret": true, "aad": true}

// ParseToken parses a token object. A token of another type is unlock.ErrNotMine; a
// malformed one wraps ErrToken.
func ParseToken(b []byte) (*Token, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrToken, err)
	}
	var typ string
	if err := json.Unmarshal(raw["type"], &typ); err != nil || typ != TokenType {
		return nil, fmt.Errorf("kms: token type %q: %w", typ, unlock.ErrNotMine)
	}
	var w struct {
		Keyslots  []string `json:"keyslots"`
		Version   int      `json:"version"`
		Mode      string   `json:"mode"`
		Servers   []string `json:"servers"`
		KEKUID    string   `json:"kek_uid"`
		Algorithm string   `json:"algorithm"`
		IV        string   `json:"iv"`
		Tag       string   `json:"tag"`
		Wrapped   string   `json:"wrapped_secret"`
		AAD       string   `json:"aad"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrToken, err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrToken, fmt.Sprintf(format, a...))
	}
	t := &Token{Version: w.Version, Mode: w.Mode, Servers: w.Servers, KEKUID: w.KEKUID,
		Algorithm: w.Algorithm, AAD: w.AAD, Extra: map[string]json.RawMessage{}}
	for k, v := range raw {
		if !known[k] {
			t.Extra[k] = v
		}
	}
	for _, s := range w.Keyslots {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 31 {
			return nil, bad("keyslot %q", s)
		}
		t.Keyslots = append(t.Keyslots, n)
	}
	if t.Version != FormatVersion {
		return nil, bad("version %d (this diskcryptd reads version %d)", t.Version, FormatVersion)
	}
	if len(t.Servers) == 0 {
		return nil, bad("no servers")
	}
	for _, s := range t.Servers {
		if err := checkServer(s); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrToken, err)
		}
	}
	if t.KEKUID == "" || len(t.KEKUID) > 256 {
		return nil, bad("kek_uid missing or too long")
	}
	switch t.Mode {
	case ModeGet:
		if w.IV != "" || w.Tag != "" || w.Wrapped != "" {
			return nil, bad("get mode carries no iv, tag or wrapped_secret")
		}
	case ModeWrap:
		if t.Algorithm != AlgAES256GCM {
			return nil, bad("algorithm %q (want %s)", t.Algorithm, AlgAES256GCM)
		}
		if t.AAD != AADRecipe {
			return nil, bad("aad recipe %q (want %s)", t.AAD, AADRecipe)
		}
		for _, f := range []struct {
			name string
			s    string
			n    int
			dst  *[]byte
		}{{"iv", w.IV, IVSize, &t.IV}, {"tag", w.Tag, TagSize, &t.Tag}, {"wrapped_secret", w.Wrapped, SecretSize, &t.Wrapped}} {
			v, err := base64.StdEncoding.DecodeString(f.s)
			if err != nil || len(v) != f.n {
				return nil, bad("%s is not base64 of %d bytes", f.name, f.n)
			}
			*f.dst = v
		}
	default:
		return nil, bad("mode %q (want %s or %s)", t.Mode, ModeWrap, ModeGet)
	}
	return t, nil
}

// checkServer accepts HOST:PORT with a port number.
func checkServer(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("server %q is not HOST:PORT", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("server %q: bad port", s)
	}
	return nil
}

// ParseServers splits a comma-separated HOST:PORT list (the --kmip-server flag).
func ParseServers(s string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if err := checkServer(p); err != nil {
			return nil, fmt.Errorf("kms: %w", err)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("kms: no KMIP server given (HOST:PORT[,HOST:PORT...])")
	}
	return out, nil
}

// Map returns the token as a JSON object: the known members, then the kept unknown
// ones. "keyslots" is included only when Keyslots is set (at enrolment the caller
// sets it).
func (t *Token) Map() map[string]any {
	m := map[string]any{}
	for k, v := range t.Extra {
		m[k] = v
	}
	m["type"] = TokenType
	m["version"] = t.Version
	m["mode"] = t.Mode
	m["servers"] = t.Servers
	m["kek_uid"] = t.KEKUID
	if t.Mode == ModeWrap {
		m["algorithm"] = t.Algorithm
		m["iv"] = base64.StdEncoding.EncodeToString(t.IV)
		m["tag"] = base64.StdEncoding.EncodeToString(t.Tag)
		m["wrapped_secret"] = base64.StdEncoding.EncodeToString(t.Wrapped)
		m["aad"] = t.AAD
	}
	if t.Keyslots != nil {
		ks := make([]string, len(t.Keyslots))
		for i, k := range t.Keyslots {
			ks[i] = strconv.Itoa(k)
		}
		m["keyslots"] = ks
	}
	return m
}

// MarshalJSON encodes Map.
func (t *Token) MarshalJSON() ([]byte, error) { return json.Marshal(t.Map()) }

// AAD returns the additional authenticated data that binds a wrapped secret to one
// keyslot of one volume: "diskcryptd-kmip/v1" NUL uuid NUL keyslot (decimal). A token
// copied to another volume, or rebound to another keyslot, does not decrypt.
func AAD(volumeUUID string, keyslot int) []byte {
	return []byte("diskcryptd-kmip/v1\x00" + strings.ToLower(volumeUUID) + "\x00" + strconv.Itoa(keyslot))
}
