package kms

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// Name is the protector's name in logs, reports and audit records.
const Name = "kmip"

// Config configures a Protector.
type Config struct {
	// Identity is the client's mutual-TLS identity and the CA of the servers.
	Identity *TLSIdentity
	// Servers, when set, replace the servers a token names (--kmip-server at unlock,
	// e.g. after the KMS moved).
	Servers []string
	// Timing bounds every operation's network work; the caller's context (the
	// daemon's token timeout) bounds the whole.
	Timing Timing
	// MaxConnections bounds this protector's simultaneous connections to one server
	// (default 4); more unlocks at once wait for a slot within their deadline.
	MaxConnections int
	// Logger receives diagnostics, never secrets; nil discards them.
	Logger hclog.Logger
}

// Protector unseals "diskcryptd-kmip" tokens through a KMIP server over mutual TLS,
// and enrolls, rewraps and creates keys there. It is safe for concurrent use.
type Protector struct {
	cfg     Config
	id      *TLSIdentity
	log     hclog.Logger
	metrics *Metrics

	mu       sync.Mutex
	releases map[releaseKey]attemptInfo
	// versions maps a server to the KMIP version it negotiated.
	versions sync.Map
	// slots maps a server to its semaphore of MaxConnections.
	slots sync.Map
}

var _ unlock.Protector = (*Protector)(nil)

// releaseKey names one token of one volume, for DescribeRelease.
type releaseKey struct {
	uuid  string
	token int
}

// attemptInfo is what the last attempt on a token did, for the audit record.
type attemptInfo struct {
	server, kek, corr string
}

// New returns a Protector.
func New(cfg Config) (*Protector, error) {
	if cfg.Identity == nil {
		return nil, errors.New("kms: mutual TLS needs --kmip-ca, --kmip-cert and --kmip-key")
	}
	for _, s := range cfg.Servers {
		if err := checkServer(s); err != nil {
			return nil, fmt.Errorf("kms: %w", err)
		}
	}
	cfg.Timing = cfg.Timing.withDefaults()
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 4
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Protector{cfg: cfg, id: cfg.Identity, log: log.Named(Name), metrics: NewMetrics(),
		releases: map[releaseKey]attemptInfo{}}, nil
}

// Name implements unlock.Protector.
func (p *Protector) Name() string { return Name }

// ConcurrentUnseal reports that Unseal may run for several volumes at once (each call
// has its own connections); the daemon then does not serialize it.
func (p *Protector) ConcurrentUnseal() bool { return true }

// Metrics returns the protector's request counters and latencies.
func (p *Protector) Metrics() *Metrics { return p.metrics }

func (p *Protector) servers(t *Token) []string {
	if len(p.cfg.Servers) > 0 {
		return p.cfg.Servers
	}
	return t.Servers
}

// Unseal implements unlock.Protector for "diskcryptd-kmip" tokens: wrap mode asks a
// server to Decrypt the wrapped secret with the KEK (the AAD binds it to tok's volume
// and keyslot); get mode fetches the secret object, only while it is Active. The
// keyslot passphrase is base64 of the 32-byte secret.
func (p *Protector) Unseal(ctx context.Context, tok unlock.Token) ([]byte, error) {
	if tok.Type != TokenType {
		return nil, fmt.Errorf("kms: token %d of type %q: %w", tok.ID, tok.Type, unlock.ErrNotMine)
	}
	t, err := ParseToken(tok.JSON)
	if err != nil {
		return nil, fmt.Errorf("token %d: %w", tok.ID, err)
	}
	if len(tok.Keyslots) != 1 {
		return nil, fmt.Errorf("token %d: %w: bound to %d keyslots, want exactly one", tok.ID, ErrToken, len(tok.Keyslots))
	}
	var aad []byte
	if t.Mode == ModeWrap {
		if aad, err = AAD(tok.VolumeUUID, tok.Keyslots[0]); err != nil {
			return nil, fmt.Errorf("token %d: cannot build the AAD: %w", tok.ID, err)
		}
	}
	servers := p.servers(t)
	var secret []byte
	var res attemptResult
	switch t.Mode {
	case ModeWrap:
		secret, res, err = p.decrypt(ctx, servers, t, aad)
	case ModeGet:
		secret, res, err = p.get(ctx, servers, t.KEKUID)
	}
	p.remember(tok, attemptInfo{server: res.server, kek: t.KEKUID, corr: res.corr}, err)
	if err != nil {
		return nil, fmt.Errorf("token %d (KEK %s): %w", tok.ID, t.KEKUID, err)
	}
	defer clear(secret)
	p.log.Info("KMS released the secret", "volume", tok.VolumeUUID, "token", tok.ID, "server", res.server, "kek", t.KEKUID, "correlation", res.corr)
	return encodePassphrase(secret), nil
}

func (p *Protector) remember(tok unlock.Token, ai attemptInfo, err error) {
	if err != nil {
		var e *Error
		if errors.As(err, &e) && len(e.Servers) > 0 {
			ai.server = e.Servers[len(e.Servers)-1].Server
			for _, s := range e.Servers {
				if s.Class == "kmip_error" {
					ai.server = s.Server
				}
			}
		}
	}
	p.mu.Lock()
	p.releases[releaseKey{tok.VolumeUUID, tok.ID}] = ai
	p.mu.Unlock()
}

// DescribeRelease adds to a key-release audit record the server that answered (or
// the last one tried), the KEK UID and the KMIP client correlation value of the
// request; it implements daemon.ReleaseDescriber.
func (p *Protector) DescribeRelease(_ context.Context, tok unlock.Token, r *audit.Record) {
	p.mu.Lock()
	ai, ok := p.releases[releaseKey{tok.VolumeUUID, tok.ID}]
	p.mu.Unlock()
	if !ok {
		return
	}
	r.KMSServer, r.KEKUID = ai.server, ai.kek
	if ai.corr != "" {
		r.Detail = "kmip correlation " + ai.corr
	}
}

func encodePassphrase(secret []byte) []byte {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(secret)))
	base64.StdEncoding.Encode(out, secret)
	return out
}

func gcmParams() *kmip.CryptographicParameters {
	return &kmip.CryptographicParameters{
		BlockCipherMode:        kmip.BlockCipherModeGCM,
		CryptographicAlgorithm: kmip.CryptographicAlgorithmAES,
		TagLength:              TagSize,
	}
}

// decrypt unwraps t's secret with its KEK.
func (p *Protector) decrypt(ctx context.Context, servers []string, t *Token, aad []byte) ([]byte, attemptResult, error) {
	var secret []byte
	res, err := p.run(ctx, "decrypt", servers, func(ctx context.Context, s *session) (string, error) {
		out, corr, err := s.request(ctx, &payloads.DecryptRequestPayload{
			UniqueIdentifier:                      t.KEKUID,
			CryptographicParameters:               gcmParams(),
			Data:                                  t.Wrapped,
			IVCounterNonce:                        t.IV,
			AuthenticatedEncryptionAdditionalData: aad,
			AuthenticatedEncryptionTag:            t.Tag,
		})
		var ke *KMIPError
		if errors.As(err, &ke) {
			return corr, kekRefusal(ctx, s, t.KEKUID, err)
		}
		if err != nil {
			return corr, err
		}
		r, err := payloadAs[*payloads.DecryptResponsePayload](out)
		if err != nil {
			return corr, err
		}
		d := r.Data
		if len(d) != SecretSize {
			clear(d)
			return corr, fmt.Errorf("KMIP Decrypt returned %d bytes, want %d", len(d), SecretSize)
		}
		secret = d
		return corr, nil
	})
	return secret, res, err
}

// get fetches a get-mode secret: the object's State must be Active, and its value 32
// bytes (SecretData or a symmetric key).
func (p *Protector) get(ctx context.Context, servers []string, uid string) ([]byte, attemptResult, error) {
	var secret []byte
	res, err := p.run(ctx, "get", servers, func(ctx context.Context, s *session) (string, error) {
		state, corr, err := s.state(ctx, uid)
		if err != nil {
			return corr, err
		}
		if state != kmip.StateActive {
			return corr, fmt.Errorf("%w: object %s is %s", ErrNotActive, uid, stateName(state))
		}
		out, corr, err := s.request(ctx, &payloads.GetRequestPayload{UniqueIdentifier: uid})
		if err != nil {
			return corr, err
		}
		got, err := payloadAs[*payloads.GetResponsePayload](out)
		if err != nil {
			return corr, err
		}
		var b []byte
		switch o := got.Object.(type) {
		case *kmip.SecretData:
			b, err = o.Data()
		case *kmip.SymmetricKey:
			b, err = o.KeyMaterial()
		default:
			err = fmt.Errorf("object %s is a %T, not secret data or a symmetric key", uid, o)
		}
		if err != nil {
			return corr, err
		}
		if len(b) != SecretSize {
			clear(b)
			return corr, fmt.Errorf("object %s holds %d bytes, want %d", uid, len(b), SecretSize)
		}
		secret = b
		return corr, nil
	})
	return secret, res, err
}

// state asks the server for the State attribute of object uid (KMIP 1.4 §3.22);
// 0 when the answer carries none.
func (s *session) state(ctx context.Context, uid string) (kmip.State, string, error) {
	out, corr, err := s.request(ctx, &payloads.GetAttributesRequestPayload{
		UniqueIdentifier: uid, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})
	if err != nil {
		return 0, corr, err
	}
	attrs, err := payloadAs[*payloads.GetAttributesResponsePayload](out)
	if err != nil {
		return 0, corr, err
	}
	state := kmip.State(0)
	for _, a := range attrs.Attribute {
		if v, ok := a.AttributeValue.(kmip.State); ok && a.AttributeName == kmip.AttributeNameState {
			state = v
		}
	}
	return state, corr, nil
}

// kekRefusal explains a refused Decrypt: when the server still knows the KEK and says
// it is no longer Active (revoked, deactivated, compromised, destroyed), the error
// says "KEK revoked" and wraps ErrNotActive as well as the server's refusal, so that
// the status of a volume whose KEK was revoked (remote crypto-erase) says so, not
// just "permission denied". Any other answer leaves the refusal as it was.
func kekRefusal(ctx context.Context, s *session, uid string, refusal error) error {
	state, _, err := s.state(ctx, uid)
	if err != nil || state == kmip.StateActive || state == 0 {
		return refusal
	}
	return fmt.Errorf("KEK revoked: %w: KEK %s is %s (%w)", ErrNotActive, uid, stateName(state), refusal)
}

func stateName(s kmip.State) string {
	if s == 0 {
		return "in no state the server reported"
	}
	return ttlv.EnumStr(s)
}

// Enrollment describes a new KMS protector for one keyslot of one volume.
type Enrollment struct {
	// Protector talks to the KMS.
	Protector *Protector
	// VolumeUUID and Keyslot are the volume and the keyslot the new secret will open;
	// they are the AAD of wrap mode.
	VolumeUUID string
	Keyslot    int
	// Servers are written into the token, in order.
	Servers []string
	// KEK is the KEK's UID (wrap) or the secret object's UID (get); empty to create a
	// new one (wrap: an AES-256 key; get: a random 32-byte SecretData).
	KEK string
	// Mode is ModeWrap (default) or ModeGet.
	Mode string
	// Created is set by Enroll to the UID it created, if it created one.
	Created string
}

var _ unlock.Enroller = (*Enrollment)(nil)

// Enroll implements unlock.Enroller: it makes (wrap) or fetches (get) the 32-byte
// secret, checks that the KMS gives it back, and returns the keyslot passphrase and
// the token (without "keyslots": bind it to e.Keyslot).
func (e *Enrollment) Enroll(ctx context.Context) (*unlock.Enrollment, error) {
	p := e.Protector
	if e.Mode == "" {
		e.Mode = ModeWrap
	}
	if e.Mode != ModeWrap && e.Mode != ModeGet {
		return nil, fmt.Errorf("kms: mode %q (want %s or %s)", e.Mode, ModeWrap, ModeGet)
	}
	if len(e.Servers) == 0 {
		return nil, errors.New("kms: enrolment needs --kmip-server")
	}
	if _, err := AAD(e.VolumeUUID, e.Keyslot); err != nil && e.Mode == ModeWrap {
		return nil, err // before any object is created in the KMS
	}
	t := &Token{Version: FormatVersion, Mode: e.Mode, Servers: e.Servers, KEKUID: e.KEK}
	var secret []byte
	switch e.Mode {
	case ModeWrap:
		if t.KEKUID == "" {
			uid, err := p.CreateKEK(ctx, e.Servers, "diskcryptd-kek-"+e.VolumeUUID)
			if err != nil {
				return nil, err
			}
			t.KEKUID, e.Created = uid, uid
		}
		aad, _ := AAD(e.VolumeUUID, e.Keyslot) // checked above
		secret = make([]byte, SecretSize)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		defer clear(secret)
		if err := p.wrap(ctx, t, secret, aad); err != nil {
			return nil, err
		}
	case ModeGet:
		if t.KEKUID == "" {
			uid, err := p.RegisterSecret(ctx, e.Servers, fmt.Sprintf("diskcryptd-secret-%s-%d", e.VolumeUUID, e.Keyslot))
			if err != nil {
				return nil, err
			}
			t.KEKUID, e.Created = uid, uid
		}
		var err error
		if secret, _, err = p.get(ctx, e.Servers, t.KEKUID); err != nil {
			return nil, err
		}
		defer clear(secret)
	}
	return &unlock.Enrollment{Passphrase: encodePassphrase(secret), Token: t.Map()}, nil
}

// wrap encrypts secret under t.KEKUID with a fresh IV and aad, stores IV, tag and
// ciphertext in t, and decrypts once to prove the KMS gives the secret back.
func (p *Protector) wrap(ctx context.Context, t *Token, secret, aad []byte) error {
	iv := make([]byte, IVSize)
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	_, err := p.run(ctx, "encrypt", t.Servers, func(ctx context.Context, s *session) (string, error) {
		out, corr, err := s.request(ctx, &payloads.EncryptRequestPayload{
			UniqueIdentifier:                      t.KEKUID,
			CryptographicParameters:               gcmParams(),
			Data:                                  secret,
			IVCounterNonce:                        iv,
			AuthenticatedEncryptionAdditionalData: aad,
		})
		if err != nil {
			return corr, err
		}
		r, err := payloadAs[*payloads.EncryptResponsePayload](out)
		if err != nil {
			return corr, err
		}
		if len(r.IVCounterNonce) > 0 && subtle.ConstantTimeCompare(r.IVCounterNonce, iv) != 1 {
			return corr, errors.New("KMIP Encrypt used another IV than the one given")
		}
		if len(r.Data) != SecretSize || len(r.AuthenticatedEncryptionTag) != TagSize {
			return corr, fmt.Errorf("KMIP Encrypt returned %d bytes and a %d-byte tag, want %d and %d",
				len(r.Data), len(r.AuthenticatedEncryptionTag), SecretSize, TagSize)
		}
		t.Wrapped, t.Tag = r.Data, r.AuthenticatedEncryptionTag
		return corr, nil
	})
	if err != nil {
		return err
	}
	t.Algorithm, t.IV, t.AAD = AlgAES256GCM, iv, AADRecipe
	got, _, err := p.decrypt(ctx, t.Servers, t, aad)
	if err != nil {
		return fmt.Errorf("kms: the KMS does not decrypt what it just encrypted: %w", err)
	}
	defer clear(got)
	if subtle.ConstantTimeCompare(got, secret) != 1 {
		return errors.New("kms: the KMS decrypted the new wrapped secret to another value")
	}
	return nil
}

// Rewrap returns tokJSON rewrapped under newKEK (KEK rotation): the secret is
// decrypted with the token's KEK and encrypted with newKEK, with a fresh IV and the
// same AAD; the secret, and so the keyslot, stay as they are. Unknown members are
// kept. The caller replaces the token in one metadata commit.
func (p *Protector) Rewrap(ctx context.Context, tokJSON []byte, volumeUUID string, newKEK string) (*Token, error) {
	t, err := ParseToken(tokJSON)
	if err != nil {
		return nil, err
	}
	if t.Mode != ModeWrap {
		return nil, fmt.Errorf("kms: a %s-mode token has no wrapped secret to rewrap; register a new secret and enroll again", t.Mode)
	}
	if len(t.Keyslots) != 1 {
		return nil, fmt.Errorf("%w: bound to %d keyslots, want exactly one", ErrToken, len(t.Keyslots))
	}
	if newKEK == "" || newKEK == t.KEKUID {
		return nil, fmt.Errorf("kms: the new KEK must differ from the token's (%s)", t.KEKUID)
	}
	aad, err := AAD(volumeUUID, t.Keyslots[0])
	if err != nil {
		return nil, err
	}
	secret, _, err := p.decrypt(ctx, p.servers(t), t, aad)
	if err != nil {
		return nil, fmt.Errorf("kms: decrypt with the old KEK %s: %w", t.KEKUID, err)
	}
	defer clear(secret)
	n := *t
	n.KEKUID = newKEK
	if len(p.cfg.Servers) > 0 {
		n.Servers = p.cfg.Servers
	}
	if err := p.wrap(ctx, &n, secret, aad); err != nil {
		return nil, fmt.Errorf("kms: encrypt with the new KEK %s: %w", newKEK, err)
	}
	return &n, nil
}

// CreateKEK creates and activates an AES-256 key usable for Encrypt and Decrypt,
// named name, and returns its UID.
func (p *Protector) CreateKEK(ctx context.Context, servers []string, name string) (string, error) {
	var uid string
	_, err := p.run(ctx, "create", servers, func(ctx context.Context, s *session) (string, error) {
		pl, err := s.c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName(name).Build()
		if err != nil {
			return "", err
		}
		out, corr, err := s.request(ctx, pl)
		if err != nil {
			return corr, err
		}
		cr, err := payloadAs[*payloads.CreateResponsePayload](out)
		if err != nil {
			return corr, err
		}
		uid = cr.UniqueIdentifier
		return s.activate(ctx, uid)
	})
	return uid, err
}

// RegisterSecret registers and activates a random 32-byte SecretData named name (get
// mode) and returns its UID.
func (p *Protector) RegisterSecret(ctx context.Context, servers []string, name string) (string, error) {
	secret := make([]byte, SecretSize)
	if _, err := rand.Read(secret); err != nil {
		return "", err
	}
	defer clear(secret)
	var uid string
	_, err := p.run(ctx, "register", servers, func(ctx context.Context, s *session) (string, error) {
		pl, err := s.c.Register().Secret(kmip.SecretDataTypeSeed, secret).WithName(name).Build()
		if err != nil {
			return "", err
		}
		out, corr, err := s.request(ctx, pl)
		if err != nil {
			return corr, err
		}
		rr, err := payloadAs[*payloads.RegisterResponsePayload](out)
		if err != nil {
			return corr, err
		}
		uid = rr.UniqueIdentifier
		return s.activate(ctx, uid)
	})
	return uid, err
}

func (s *session) activate(ctx context.Context, uid string) (string, error) {
	_, corr, err := s.request(ctx, &payloads.ActivateRequestPayload{UniqueIdentifier: uid})
	return corr, err
}

// Revoke revokes the object uid (a KEK or a get-mode secret) with reason
// "cessation of operation" and message: from then on no volume whose token names it
// unlocks through the KMS (remote revocation).
func (p *Protector) Revoke(ctx context.Context, servers []string, uid, message string) error {
	_, err := p.run(ctx, "revoke", servers, func(ctx context.Context, s *session) (string, error) {
		_, corr, err := s.request(ctx, &payloads.RevokeRequestPayload{
			UniqueIdentifier: uid,
			RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation, RevocationMessage: message},
		})
		return corr, err
	})
	return err
}
