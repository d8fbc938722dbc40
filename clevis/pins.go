package clevis

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	josecipher "github.com/go-jose/go-jose/v4/cipher"
	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/tang"
	"github.com/diskcryptd/diskcryptd/tpm"
)

// ErrNoTrust is returned when a tang pin would be bound to an advertisement that
// nothing vouches for: no "thp", no "adv", and no trust on first use.
var ErrNoTrust = errors.New("clevis: tang advertisement is not trusted: pin its signing key with \"thp\" (--tang-thumbprint) or pass --trust-first-use")

// ErrNoTPM is returned for a tpm2 pin when no TPM is configured.
var ErrNoTPM = errors.New("clevis: a tpm2 pin needs a TPM and none is configured")

// TPM2 seals and unseals the content keys of tpm2 pins.
type TPM2 interface {
	// Seal seals secret to the PCRs pcrIDs ("7", "0,7") of bank and returns the
	// clevis tpm2 header.
	Seal(ctx context.Context, secret []byte, pcrIDs, bank string) (*tpm.ClevisTPM2, error)
	// Unseal returns the sealed secret of a clevis tpm2 header; the caller wipes it.
	Unseal(ctx context.Context, h *tpm.ClevisTPM2) ([]byte, error)
}

// Pins decrypts and encrypts clevis JWEs. Its zero value decrypts nothing that needs
// a server or a TPM; set the fields it needs.
type Pins struct {
	// Tang talks to Tang servers (nil: a Client with its defaults per request, with
	// no connection reuse).
	Tang *tang.Client
	// TPM2 serves tpm2 pins (nil: tpm2 pins fail with ErrNoTPM).
	TPM2 TPM2
	// TrustFirstUse lets a tang binding without "thp" trust the advertisement it
	// fetches; Trusted is told what was trusted.
	TrustFirstUse bool
	// Trusted is called for every tang advertisement trusted at encryption, with how
	// ("thp", "adv", "first use") and the signing keys' SHA-256 thumbprints. Binding
	// is never silent: with TrustFirstUse and no Trusted, encryption fails.
	Trusted func(url, how string, thumbprints []string)
	// Logger gets diagnostics (never secrets); nil discards.
	Logger hclog.Logger
}

func (p *Pins) log() hclog.Logger {
	if p.Logger == nil {
		return hclog.NewNullLogger()
	}
	return p.Logger
}

// tang returns the Tang client; without one, a default client for this call (Pins
// is not modified: its methods run concurrently for the shares of an sss pin).
func (p *Pins) tang() *tang.Client {
	if p.Tang == nil {
		return &tang.Client{}
	}
	return p.Tang
}

// Decrypt decrypts a clevis JWE and returns its plaintext (for a LUKS2 token, the
// keyslot passphrase), which the caller wipes.
func (p *Pins) Decrypt(ctx context.Context, j *JWE) ([]byte, error) {
	switch j.Clevis.Pin {
	case "tang":
		return p.decryptTang(ctx, j)
	case "tpm2":
		return p.decryptTPM2(ctx, j)
	case "sss":
		return p.decryptSSS(ctx, j)
	}
	return nil, fmt.Errorf("%w: unknown pin %q", ErrMalformed, j.Clevis.Pin)
}

// cekKey hands go-jose a content key derived outside it (the ECDH-ES key of a tang
// pin, whose shared secret comes from the McCallum-Relyea exchange).
type cekKey []byte

// DecryptKey implements jose.OpaqueKeyDecrypter: the key is already derived.
func (k cekKey) DecryptKey([]byte, jose.Header) ([]byte, error) { return k, nil }

func decryptWith(j *JWE, key any) ([]byte, error) {
	pt, err := j.obj.Decrypt(key)
	if err != nil {
		return nil, fmt.Errorf("clevis: %s JWE does not decrypt (wrong key or altered token): %w", j.Clevis.Pin, err)
	}
	return pt, nil
}

func headerBytes(h jose.Header, name string) ([]byte, error) {
	v, ok := h.ExtraHeaders[jose.HeaderKey(name)]
	if !ok {
		return nil, nil
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a string", ErrMalformed, name)
	}
	return base64.RawURLEncoding.DecodeString(s)
}

func (p *Pins) decryptTang(ctx context.Context, j *JWE) ([]byte, error) {
	th := j.Clevis.Tang
	adv, err := tang.ParseKeys(th.Adv)
	if err != nil {
		return nil, fmt.Errorf("clevis: tang %s: token's adv: %w", th.URL, err)
	}
	srv, err := adv.ExchangeKey(j.KeyID)
	if err != nil {
		return nil, fmt.Errorf("clevis: tang %s: %w", th.URL, err)
	}
	raw, ok := j.obj.Header.ExtraHeaders["epk"]
	if !ok {
		return nil, fmt.Errorf("%w: tang JWE without epk", ErrMalformed)
	}
	eb, _ := json.Marshal(raw)
	var epk jose.JSONWebKey
	if err := epk.UnmarshalJSON(eb); err != nil {
		return nil, fmt.Errorf("%w: tang epk: %v", ErrMalformed, err)
	}
	epub, ok := epk.Key.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: tang epk is not an EC public key", ErrMalformed)
	}
	apu, err1 := headerBytes(j.obj.Header, "apu")
	apv, err2 := headerBytes(j.obj.Header, "apv")
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("%w: tang apu/apv: %v", ErrMalformed, err)
	}
	enc, _ := j.obj.Header.ExtraHeaders["enc"].(string)
	size := map[string]int{"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}[enc]
	if size == 0 {
		return nil, fmt.Errorf("%w: tang enc %q", ErrMalformed, enc)
	}
	z, err := p.tang().Recover(ctx, th.URL, j.KeyID, srv.Public(), epub)
	if err != nil {
		return nil, err
	}
	defer clear(z)
	cek := concatKDF(z, enc, apu, apv, size)
	defer clear(cek)
	return decryptWith(j, cekKey(cek))
}

// concatKDF derives the ECDH-ES content key (RFC 7518, 4.6.2) with go-jose's KDF.
func concatKDF(z []byte, enc string, apu, apv []byte, size int) []byte {
	prefixed := func(b []byte) []byte {
		return binary.BigEndian.AppendUint32(nil, uint32(len(b))) // length, then data
	}
	supPub := binary.BigEndian.AppendUint32(nil, uint32(size*8))
	r := josecipher.NewConcatKDF(crypto.SHA256, z,
		append(prefixed([]byte(enc)), enc...),
		append(prefixed(apu), apu...),
		append(prefixed(apv), apv...),
		supPub, []byte{})
	out := make([]byte, size)
	_, _ = r.Read(out)
	return out
}

func (p *Pins) decryptTPM2(ctx context.Context, j *JWE) ([]byte, error) {
	if p.TPM2 == nil {
		return nil, ErrNoTPM
	}
	jwkJSON, err := p.TPM2.Unseal(ctx, j.Clevis.TPM2)
	if err != nil {
		return nil, err
	}
	defer clear(jwkJSON)
	key, err := octKey(jwkJSON)
	if err != nil {
		return nil, fmt.Errorf("clevis: tpm2 unsealed key: %w", err)
	}
	defer clear(key)
	return decryptWith(j, key)
}

// octKey returns the key of a symmetric JWK; the caller wipes it. The key's text is
// held only in byte slices that are wiped, never in a Go string.
func octKey(b []byte) ([]byte, error) {
	var k struct {
		Kty string          `json:"kty"`
		K   json.RawMessage `json:"k"`
	}
	err := json.Unmarshal(b, &k)
	defer clear(k.K)
	if err != nil {
		return nil, errors.New("not a JWK")
	}
	if k.Kty != "oct" {
		return nil, fmt.Errorf("JWK kty %q, want oct", k.Kty)
	}
	text := k.K
	if len(text) < 2 || text[0] != '"' || text[len(text)-1] != '"' || bytes.IndexByte(text, '\\') >= 0 {
		return nil, errors.New("JWK k is not a base64url string")
	}
	text = text[1 : len(text)-1]
	key := make([]byte, base64.RawURLEncoding.DecodedLen(len(text)))
	n, err := base64.RawURLEncoding.Decode(key, text)
	if err != nil || n == 0 {
		clear(key)
		return nil, errors.New("JWK k is not base64url")
	}
	return key[:n], nil
}

// decryptSSS decrypts the shares concurrently and stops at t: the others are
// cancelled, and it returns once they have all returned (no work left running, no
// late log line), wiping what they decrypted.
func (p *Pins) decryptSSS(ctx context.Context, j *JWE) ([]byte, error) {
	s := j.Clevis.SSS
	prime, err := parsePrime(s.P)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		i   int
		pt  []byte
		err error
	}
	ch := make(chan result, len(j.Children))
	for i, c := range j.Children {
		go func() {
			pt, err := p.Decrypt(ctx, c)
			ch <- result{i, pt, err}
		}()
	}
	var points [][]byte
	var errs []error
	pending := len(j.Children)
	defer func() {
		cancel()
		for ; pending > 0; pending-- {
			if r := <-ch; r.pt != nil {
				clear(r.pt)
			}
		}
		for _, pt := range points {
			clear(pt)
		}
	}()
	for pending > 0 && len(points) < s.T && len(errs) <= len(j.Children)-s.T {
		r := <-ch
		pending--
		if r.err != nil {
			errs = append(errs, fmt.Errorf("share %d (%s): %w", r.i, describe(j.Children[r.i]), r.err))
			continue
		}
		points = append(points, r.pt)
	}
	if len(points) < s.T {
		return nil, fmt.Errorf("clevis: sss t=%d: %d of %d shares failed: %w", s.T, len(errs), len(j.Children), errors.Join(errs...))
	}
	key, err := recoverSecret(prime, points)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	pt, err := decryptWith(j, key)
	if err != nil {
		return nil, fmt.Errorf("%w (shares that decrypt to the wrong point?)", err)
	}
	return pt, nil
}

// Encrypt encrypts plaintext with pin and its clevis configuration (the JSON that
// "clevis encrypt PIN CONFIG" takes) and returns the compact JWE.
func (p *Pins) Encrypt(ctx context.Context, pin string, cfg json.RawMessage, plaintext []byte) (string, error) {
	return p.encrypt(ctx, pin, cfg, plaintext, 0)
}

func (p *Pins) encrypt(ctx context.Context, pin string, cfg json.RawMessage, plaintext []byte, depth int) (string, error) {
	if depth > MaxDepth {
		return "", fmt.Errorf("clevis: sss nested deeper than %d", MaxDepth)
	}
	switch pin {
	case "tang":
		return p.encryptTang(ctx, cfg, plaintext)
	case "tpm2":
		return p.encryptTPM2(ctx, cfg, plaintext)
	case "sss":
		return p.encryptSSS(ctx, cfg, plaintext, depth)
	}
	return "", fmt.Errorf("clevis: unknown pin %q (tang, tpm2, sss)", pin)
}

// TangConfig is the tang pin's configuration, as clevis takes it.
type TangConfig struct {
	// URL is the server's base URL.
	URL string `json:"url"`
	// Thp is the thumbprint of a trusted signing key.
	Thp string `json:"thp,omitempty"`
	// Adv is a trusted advertisement: the JWS object, or a file name holding it.
	Adv json.RawMessage `json:"adv,omitempty"`
}

func (p *Pins) encryptTang(ctx context.Context, raw json.RawMessage, plaintext []byte) (string, error) {
	var cfg TangConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("clevis: tang config: %w", err)
	}
	if cfg.URL == "" {
		return "", errors.New("clevis: tang config needs \"url\"")
	}
	var (
		adv *tang.Adv
		err error
		how string
	)
	if len(cfg.Adv) > 0 {
		body := []byte(cfg.Adv)
		var file string
		if json.Unmarshal(cfg.Adv, &file) == nil {
			if body, err = os.ReadFile(file); err != nil {
				return "", fmt.Errorf("clevis: tang adv file: %w", err)
			}
		}
		if adv, err = tang.ParseAdv(body); err != nil {
			return "", fmt.Errorf("clevis: tang %s: given adv: %w", cfg.URL, err)
		}
		how = "adv"
	} else if adv, err = p.tang().Adv(ctx, cfg.URL, cfg.Thp); err != nil {
		if errors.Is(err, tang.ErrUnknownKey) {
			return "", fmt.Errorf("clevis: %w: %w", tang.ErrUntrusted, err)
		}
		return "", err
	}
	switch {
	case cfg.Thp != "" && cfg.Thp != "any":
		if adv.SignedBy(cfg.Thp) == nil {
			return "", fmt.Errorf("clevis: tang %s: %w: %s did not sign it (it is signed by %s)", cfg.URL, tang.ErrUntrusted, cfg.Thp, strings.Join(adv.SigningThumbprints(), ", "))
		}
		how = "thp"
	case how == "adv":
	case p.TrustFirstUse && p.Trusted != nil:
		how = "first use"
	default:
		return "", fmt.Errorf("clevis: tang %s: %w (it is signed by %s)", cfg.URL, ErrNoTrust, strings.Join(adv.SigningThumbprints(), ", "))
	}
	if p.Trusted != nil {
		p.Trusted(cfg.URL, how, adv.SigningThumbprints())
	}
	return encryptTangWith(cfg.URL, adv, plaintext)
}

func encryptTangWith(url string, adv *tang.Adv, plaintext []byte) (string, error) {
	xk, err := adv.ExchangeKey("")
	if err != nil {
		return "", err
	}
	kid := xk.Thumbprint(crypto.SHA256)
	hdr := map[string]any{"pin": "tang", "tang": map[string]any{"url": url, "adv": adv.JWKS}}
	enc, err := jose.NewEncrypter(jose.A256GCM,
		jose.Recipient{Algorithm: jose.ECDH_ES, Key: xk.Public(), KeyID: kid},
		(&jose.EncrypterOptions{}).WithHeader("clevis", hdr))
	if err != nil {
		return "", fmt.Errorf("clevis: tang: %w", err)
	}
	return compact(enc, plaintext)
}

func compact(enc jose.Encrypter, plaintext []byte) (string, error) {
	obj, err := enc.Encrypt(plaintext)
	if err != nil {
		return "", fmt.Errorf("clevis: encrypt: %w", err)
	}
	return obj.CompactSerialize()
}

// encryptDir encrypts with a content key of our own ("alg":"dir", A256GCM).
func encryptDir(cek []byte, hdr map[string]any, plaintext []byte) (string, error) {
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: cek},
		(&jose.EncrypterOptions{}).WithHeader("clevis", hdr))
	if err != nil {
		return "", fmt.Errorf("clevis: %w", err)
	}
	return compact(enc, plaintext)
}

// TPM2Config is the tpm2 pin's configuration, as clevis takes it.
type TPM2Config struct {
	// PCRIDs are the PCRs, "7" or "0,7" (an array of numbers is accepted too).
	PCRIDs json.RawMessage `json:"pcr_ids,omitempty"`
	// PCRBank is the PCR bank (default sha256).
	PCRBank string `json:"pcr_bank,omitempty"`
	// Hash is the object name algorithm; only sha256.
	Hash string `json:"hash,omitempty"`
	// Key is the primary key algorithm; only ecc.
	Key string `json:"key,omitempty"`
}

func (c *TPM2Config) pcrs() (string, error) {
	if len(c.PCRIDs) == 0 {
		return "", nil
	}
	var s string
	if json.Unmarshal(c.PCRIDs, &s) == nil {
		return s, nil
	}
	var n []int
	if err := json.Unmarshal(c.PCRIDs, &n); err != nil {
		return "", fmt.Errorf("clevis: tpm2 pcr_ids: %w", err)
	}
	parts := make([]string, len(n))
	for i, v := range n {
		parts[i] = strconv.Itoa(v)
	}
	return strings.Join(parts, ","), nil
}

func (p *Pins) encryptTPM2(ctx context.Context, raw json.RawMessage, plaintext []byte) (string, error) {
	if p.TPM2 == nil {
		return "", ErrNoTPM
	}
	var cfg TPM2Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("clevis: tpm2 config: %w", err)
	}
	if h := strings.ToLower(cfg.Hash); h != "" && h != "sha256" {
		return "", fmt.Errorf("clevis: tpm2 hash %q: only sha256", cfg.Hash)
	}
	if k := strings.ToLower(cfg.Key); k != "" && k != "ecc" {
		return "", fmt.Errorf("clevis: tpm2 key %q: only ecc", cfg.Key)
	}
	pcrs, err := cfg.pcrs()
	if err != nil {
		return "", err
	}
	bank := cfg.PCRBank
	if bank == "" {
		bank = "sha256"
	}
	cek := make([]byte, 32)
	if _, err := rand.Read(cek); err != nil {
		return "", err
	}
	defer clear(cek)
	// Built in a byte slice, never a string, so that it can be wiped.
	jwk := append([]byte(`{"alg":"A256GCM","k":"`), make([]byte, 0, 128)...)
	jwk = base64.RawURLEncoding.AppendEncode(jwk, cek)
	jwk = append(jwk, `","key_ops":["encrypt","decrypt"],"kty":"oct"}`...)
	defer clear(jwk)
	h, err := p.TPM2.Seal(ctx, jwk, pcrs, bank)
	if err != nil {
		return "", err
	}
	return encryptDir(cek, map[string]any{"pin": "tpm2", "tpm2": h}, plaintext)
}

// SSSConfig is the sss pin's configuration, as clevis takes it: the threshold and,
// per pin name, one configuration object or an array of them.
type SSSConfig struct {
	// T is the threshold (default 1).
	T int `json:"t"`
	// Pins are the child pins' configurations.
	Pins json.RawMessage `json:"pins"`
}

// Child is one child pin of an sss configuration.
type Child struct {
	// Pin names the pin.
	Pin string
	// Config is its configuration.
	Config json.RawMessage
}

// Children lists the child pins of an sss configuration in their JSON order.
func (c *SSSConfig) Children() ([]Child, error) {
	dec := json.NewDecoder(bytes.NewReader(c.Pins))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("clevis: sss config needs \"pins\": {PIN: CONFIG or [CONFIG, ...]}")
	}
	var out []Child
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("clevis: sss pins: %w", err)
		}
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("clevis: sss pin %s: %w", name, err)
		}
		switch {
		case len(v) > 0 && v[0] == '{':
			out = append(out, Child{name, v})
		case len(v) > 0 && v[0] == '[':
			var arr []json.RawMessage
			if err := json.Unmarshal(v, &arr); err != nil {
				return nil, fmt.Errorf("clevis: sss pin %s: %w", name, err)
			}
			for _, a := range arr {
				out = append(out, Child{name, a})
			}
		default:
			return nil, fmt.Errorf("clevis: sss pin %s: config is not an object or array", name)
		}
	}
	return out, nil
}

func (p *Pins) encryptSSS(ctx context.Context, raw json.RawMessage, plaintext []byte, depth int) (string, error) {
	cfg := SSSConfig{T: 1}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("clevis: sss config: %w", err)
	}
	kids, err := cfg.Children()
	if err != nil {
		return "", err
	}
	if cfg.T < 1 || cfg.T > len(kids) {
		return "", fmt.Errorf("clevis: sss threshold t=%d with %d pins (need 1 <= t <= n)", cfg.T, len(kids))
	}
	if len(kids) > MaxShares {
		return "", fmt.Errorf("clevis: sss with %d pins (at most %d)", len(kids), MaxShares)
	}
	poly, err := newPolynomial(cfg.T)
	if err != nil {
		return "", err
	}
	defer poly.wipe()
	var jwes []string
	for _, k := range kids {
		pt, err := poly.point()
		if err != nil {
			return "", err
		}
		c, err := p.encrypt(ctx, k.Pin, k.Config, pt, depth+1)
		clear(pt)
		if err != nil {
			return "", err
		}
		jwes = append(jwes, c)
	}
	key := poly.key()
	defer clear(key)
	hdr := map[string]any{"pin": "sss", "sss": map[string]any{
		"t": cfg.T, "p": base64.RawURLEncoding.EncodeToString(poly.p.FillBytes(make([]byte, sssBytes))), "jwe": jwes}}
	return encryptDir(key, hdr, plaintext)
}
