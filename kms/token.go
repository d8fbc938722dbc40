package kms

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/diskcryptd/diskcryptd/luks2"
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

// Bounds of a token's members: a header is attacker-controlled input, and what we
// read must stay small and printable (server names and UIDs reach logs and errors).
const (
	// MaxServers is the most servers a token (or --kmip-server) may name.
	MaxServers = 16
	// maxServerLen bounds one HOST:PORT (a DNS name is at most 253 characters).
	maxServerLen = 261
	// maxUIDLen bounds kek_uid.
	maxUIDLen = 256
	// maxKeyslots bounds the token's keyslots list (LUKS2 has 32 keyslots).
	maxKeyslots = 32
)

// ParseToken parses a token object. A token of another type is unlock.ErrNotMine; a
// malformed one wraps ErrToken. It reads the JSON as cryptsetup's json-c does: a
// member repeated, or differing from a known one only by case, is refused
// (luks2.DecodeStrict), so no two readers see different tokens.
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
		Type      string   `json:"type"`
		Keyslots  []string `json:"keyslots"`
		Version   *int     `json:"version"`
		Mode      string   `json:"mode"`
		Servers   []string `json:"servers"`
		KEKUID    string   `json:"kek_uid"`
		Algorithm string   `json:"algorithm"`
		IV        string   `json:"iv"`
		Tag       string   `json:"tag"`
		Wrapped   string   `json:"wrapped_secret"`
		AAD       string   `json:"aad"`
	}
	if err := luks2.DecodeStrict(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrToken, err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrToken, fmt.Sprintf(format, a...))
	}
	if w.Version == nil {
		return nil, bad("no format version (this diskcryptd reads version %d)", FormatVersion)
	}
	if *w.Version != FormatVersion {
		return nil, bad("format version %d is not supported: this diskcryptd reads version %d only; a newer diskcryptd wrote this token", *w.Version, FormatVersion)
	}
	t := &Token{Version: *w.Version, Mode: w.Mode, Servers: w.Servers, KEKUID: w.KEKUID,
		Algorithm: w.Algorithm, AAD: w.AAD, Extra: map[string]json.RawMessage{}}
	for k, v := range raw {
		if !known[k] {
			t.Extra[k] = v
		}
	}
	if len(w.Keyslots) > maxKeyslots {
		return nil, bad("%d keyslots", len(w.Keyslots))
	}
	for _, s := range w.Keyslots {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 31 || s != strconv.Itoa(n) {
			return nil, bad("keyslot %q", s)
		}
		t.Keyslots = append(t.Keyslots, n)
	}
	if len(t.Servers) == 0 || len(t.Servers) > MaxServers {
		return nil, bad("%d servers (want 1 to %d)", len(t.Servers), MaxServers)
	}
	for _, s := range t.Servers {
		if err := checkServer(s); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrToken, err)
		}
	}
	if t.KEKUID == "" || len(t.KEKUID) > maxUIDLen || !printable(t.KEKUID) {
		return nil, bad("kek_uid missing, longer than %d bytes or not printable", maxUIDLen)
	}
	switch t.Mode {
	case ModeGet:
		if w.IV != "" || w.Tag != "" || w.Wrapped != "" || w.Algorithm != "" || w.AAD != "" {
			return nil, bad("get mode carries no algorithm, aad, iv, tag or wrapped_secret")
		}
	case ModeWrap:
		if t.Algorithm != AlgAES256GCM {
			return nil, bad("algorithm %.40q (want %s)", t.Algorithm, AlgAES256GCM)
		}
		if t.AAD != AADRecipe {
			return nil, bad("aad recipe %.40q (want %s)", t.AAD, AADRecipe)
		}
		for _, f := range []struct {
			name string
			s    string
			n    int
			dst  *[]byte
		}{{"iv", w.IV, IVSize, &t.IV}, {"tag", w.Tag, TagSize, &t.Tag}, {"wrapped_secret", w.Wrapped, SecretSize, &t.Wrapped}} {
			// Canonical base64 only, checked on the text's length before decoding.
			if len(f.s) != base64.StdEncoding.EncodedLen(f.n) {
				return nil, bad("%s is not base64 of %d bytes", f.name, f.n)
			}
			v, err := base64.StdEncoding.Strict().DecodeString(f.s)
			if err != nil || len(v) != f.n {
				return nil, bad("%s is not base64 of %d bytes", f.name, f.n)
			}
			*f.dst = v
		}
	default:
		return nil, bad("mode %.40q (want %s or %s)", t.Mode, ModeWrap, ModeGet)
	}
	return t, nil
}

// printable reports whether s is non-empty printable ASCII without spaces: what a
// KMIP UID or a host name may be here, so neither can forge log lines or terminal
// output.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return s != ""
}

// checkServer accepts HOST:PORT with a port number and a printable host.
func checkServer(s string) error {
	if len(s) > maxServerLen || !printable(s) {
		return fmt.Errorf("server %.64q is not HOST:PORT", s)
	}
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
	if len(out) > MaxServers {
		return nil, fmt.Errorf("kms: %d KMIP servers given, at most %d", len(out), MaxServers)
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

// ErrVolumeUUID is wrapped when a volume's UUID is not a canonical UUID: the AAD
// must name one volume unambiguously, so nothing else is bound into it.
var ErrVolumeUUID = errors.New("kms: the volume's LUKS2 UUID is not a canonical UUID (8-4-4-4-12 hex digits)")

// AAD returns the additional authenticated data that binds a wrapped secret to one
// keyslot of one volume: "diskcryptd-kmip/v1" NUL uuid NUL keyslot (decimal). The
// UUID must be 36 characters of hex digits and hyphens in the 8-4-4-4-12 layout
// (written in lower case) and the keyslot 0 to 31, so the encoding is unambiguous:
// no crafted UUID can carry a separator or another keyslot, and no two volumes or
// keyslots share an AAD. A token copied to another volume, or rebound to another
// keyslot, does not decrypt.
func AAD(volumeUUID string, keyslot int) ([]byte, error) {
	if !canonicalUUID(volumeUUID) {
		return nil, fmt.Errorf("%w: %.64q", ErrVolumeUUID, volumeUUID)
	}
	if keyslot < 0 || keyslot > 31 {
		return nil, fmt.Errorf("kms: keyslot %d out of range", keyslot)
	}
	return []byte("diskcryptd-kmip/v1\x00" + strings.ToLower(volumeUUID) + "\x00" + strconv.Itoa(keyslot)), nil
}

// canonicalUUID reports whether s is a UUID in its 8-4-4-4-12 text form (RFC 9562
// section 4), in either case.
func canonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
