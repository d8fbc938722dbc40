package tpm

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/unlock"
)

// PINFunc asks for a PIN (from a terminal, an agent or a file, never argv). prompt
// says what it is for. The caller of PINFunc wipes the returned slice.
type PINFunc func(ctx context.Context, prompt string) ([]byte, error)

// Config configures a Protector.
type Config struct {
	// Device is the TPM in systemd's syntax ("" or "auto" for /dev/tpmrm0,
	// "swtpm:path=SOCKET", or a device path). Ignored if Open is set.
	Device string
	// Open, if set, opens the TPM instead of Device (tests, shared transports).
	Open func(ctx context.Context) (transport.TPMCloser, error)
	// PCRs are the PCRs new enrolments are sealed to (default: 7).
	PCRs []int
	// Bank is the PCR bank of new enrolments ("" for sha256).
	Bank string
	// PrimaryAlg is the primary key algorithm of new enrolments (default: ECC,
	// falling back to RSA).
	PrimaryAlg PrimaryAlg
	// EnrollWithPIN adds a PIN to new enrolments; the PIN comes from PIN.
	EnrollWithPIN bool
	// PIN supplies PINs for enrolment and for tokens that need one.
	PIN PINFunc
	// PublicKey, if set, is the PEM RSA public key whose signatures new enrolments
	// accept for the PCRs in PublicKeyPCRs (a signed policy, systemd's
	// --tpm2-public-key). PCRs then lists PCRs bound to today's values besides.
	PublicKey []byte
	// PublicKeyPCRs are the PCRs whose signed values unlock (default: 11).
	PublicKeyPCRs []int
	// Signature is systemd-measure's PCR signature JSON for tokens with a signed
	// policy; "" reads DefaultSignaturePath when it exists. Read at each unseal.
	Signature string
	// Logger receives diagnostics (never secrets). nil discards them.
	Logger hclog.Logger
}

// Protector unseals "systemd-tpm2" tokens and enrolls new ones.
type Protector struct {
	cfg  Config
	bank tpm2.TPMIAlgHash
	log  hclog.Logger
}

var (
	_ unlock.Protector = (*Protector)(nil)
	_ unlock.Enroller  = (*Protector)(nil)
)

// NewProtector validates cfg and returns a Protector.
func NewProtector(cfg Config) (*Protector, error) {
	bank, err := ParseBank(cfg.Bank)
	if err != nil {
		return nil, err
	}
	if cfg.PCRs == nil {
		cfg.PCRs = []int{7}
	}
	for _, p := range cfg.PCRs {
		if p < 0 || p > MaxPCR {
			return nil, fmt.Errorf("tpm: PCR %d out of range", p)
		}
	}
	if len(cfg.PublicKey) > 0 {
		if len(cfg.PublicKeyPCRs) == 0 {
			cfg.PublicKeyPCRs = DefaultSignedPCRs
		}
		if _, err := NewSignedPolicy(cfg.PublicKey, cfg.PublicKeyPCRs); err != nil {
			return nil, err
		}
	}
	if cfg.EnrollWithPIN && cfg.PIN == nil {
		return nil, errors.New("tpm: enrolment with a PIN needs a PIN source")
	}
	switch cfg.PrimaryAlg {
	case PrimaryAuto, PrimaryECC, PrimaryRSA:
	default:
		return nil, fmt.Errorf("tpm: unknown primary key algorithm %q", cfg.PrimaryAlg)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Protector{cfg: cfg, bank: bank, log: log.Named("tpm2")}, nil
}

// Name implements unlock.Protector.
func (p *Protector) Name() string { return "tpm2" }

func (p *Protector) open(ctx context.Context) (transport.TPMCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.cfg.Open != nil {
		return p.cfg.Open(ctx)
	}
	return OpenContext(ctx, p.cfg.Device)
}

// withTPM opens the TPM and runs fn on it. On a TPM reached without a resource
// manager, a failure for want of a free session or object slot means another process
// left handles loaded (systemd-cryptsetup does): the stale handles are flushed and fn
// runs once more.
func (p *Protector) withTPM(ctx context.Context, fn func(t transport.TPM) error) error {
	t, err := p.open(ctx)
	if err != nil {
		return err
	}
	defer t.Close()
	n, err := WithStaleRetry(ctx, t, func() error { return fn(t) })
	if n > 0 {
		p.log.Warn("the TPM (no resource manager) had no free slot; flushed the sessions and objects another process left loaded, retried", "flushed", n)
	}
	return err
}

// Unseal implements unlock.Protector for "systemd-tpm2" tokens; other tokens
// (clevis ones included: package clevis reads those) are unlock.ErrNotMine, and so is
// a blob that this TPM's storage key cannot load (another machine's TPM).
func (p *Protector) Unseal(ctx context.Context, tok unlock.Token) ([]byte, error) {
	switch tok.Type {
	case TypeSystemd:
		return p.unsealSystemd(ctx, tok)
	}
	return nil, fmt.Errorf("tpm: token %d of type %q: %w", tok.ID, tok.Type, unlock.ErrNotMine)
}

func (p *Protector) unsealSystemd(ctx context.Context, tok unlock.Token) ([]byte, error) {
	st, err := ParseSystemdToken(tok.JSON)
	if err != nil {
		return nil, fmt.Errorf("token %d: %w", tok.ID, err)
	}
	sealed, err := st.Sealed()
	if err != nil {
		return nil, fmt.Errorf("token %d: %w", tok.ID, err)
	}
	log := p.log.With("token", tok.ID, "type", tok.Type, "pcrs", FormatPCRs(sealed.Policy.PCRs), "bank", BankName(sealed.Policy.bank()), "pin", sealed.Policy.PIN)
	var authValue []byte
	if sealed.Policy.PIN {
		salt, err := st.SaltBytes()
		if err != nil {
			return nil, fmt.Errorf("token %d: %w", tok.ID, err)
		}
		if authValue, err = p.pinAuth(ctx, fmt.Sprintf("TPM2 PIN for LUKS2 token %d", tok.ID), salt); err != nil {
			return nil, fmt.Errorf("token %d: %w", tok.ID, err)
		}
		defer wipe(authValue)
	}
	var sigs PCRSignatures
	if sp := sealed.Policy.Signed; sp != nil {
		if sigs, err = ReadPCRSignatures(p.cfg.Signature); err != nil {
			return nil, fmt.Errorf("token %d: %w", tok.ID, err)
		}
		log = log.With("signed_pcrs", FormatPCRs(sp.PCRs), "key", sp.Fingerprint())
	}
	var secret []byte
	err = p.withTPM(ctx, func(t transport.TPM) error {
		var err error
		secret, err = p.unsealSystemdOn(ctx, t, tok.ID, st, sealed, authValue, sigs)
		return err
	})
	if err != nil {
		log.Debug("unseal failed", "error", err)
		return nil, err
	}
	defer wipe(secret)
	log.Debug("unsealed")
	out := make([]byte, base64.StdEncoding.EncodedLen(len(secret)))
	base64.StdEncoding.Encode(out, secret)
	return out, nil
}

// unsealSystemdOn unseals a systemd token's object on t, under the persistent SRK
// the token names or under a transient primary key of the token's algorithm.
func (p *Protector) unsealSystemdOn(ctx context.Context, t transport.TPM, id int, st *SystemdToken, sealed *Sealed, authValue []byte, sigs PCRSignatures) ([]byte, error) {
	if st.SRK != "" {
		raw, err := base64.StdEncoding.DecodeString(st.SRK)
		if err != nil {
			return nil, fmt.Errorf("token %d: tpm2_srk is not base64: %w", id, err)
		}
		srk, err := ParseSerializedSRK(raw)
		if err != nil {
			return nil, fmt.Errorf("token %d: %w", id, err)
		}
		parent, err := LoadPersistent(ctx, t, srk.Handle, srk.Name)
		if err != nil {
			return nil, notMineIfWrongTPM(id, err)
		}
		secret, err := UnsealSigned(ctx, t, parent, sealed, authValue, sigs)
		if err != nil {
			return nil, notMineIfWrongTPM(id, err)
		}
		return secret, nil
	}
	algs := []PrimaryAlg{PrimaryAlg(st.PrimaryAlg)}
	if st.PrimaryAlg == "" {
		algs = []PrimaryAlg{PrimaryECC, PrimaryRSA}
	}
	var secret []byte
	var err error
	for i, alg := range algs {
		secret, err = p.unsealUnderPrimary(ctx, t, alg, sealed, authValue, sigs)
		if err == nil || !errors.Is(err, ErrWrongTPM) || i == len(algs)-1 {
			break
		}
	}
	if err != nil {
		return nil, notMineIfWrongTPM(id, err)
	}
	return secret, nil
}

func (p *Protector) unsealUnderPrimary(ctx context.Context, t transport.TPM, alg PrimaryAlg, s *Sealed, authValue []byte, sigs PCRSignatures) ([]byte, error) {
	parent, err := CreatePrimary(ctx, t, alg)
	if err != nil {
		return nil, err
	}
	defer parent.Close(t)
	return UnsealSigned(ctx, t, parent, s, authValue, sigs)
}

func notMineIfWrongTPM(id int, err error) error {
	if errors.Is(err, ErrWrongTPM) {
		return fmt.Errorf("token %d: %w: %w", id, unlock.ErrNotMine, err)
	}
	return fmt.Errorf("token %d: %w", id, err)
}

func (p *Protector) pinAuth(ctx context.Context, prompt string, salt []byte) ([]byte, error) {
	if p.cfg.PIN == nil {
		return nil, ErrPINRequired
	}
	pin, err := p.cfg.PIN(ctx, prompt)
	if err != nil {
		return nil, fmt.Errorf("tpm: read PIN: %w", err)
	}
	defer wipe(pin)
	if len(pin) == 0 {
		return nil, errors.New("tpm: empty PIN")
	}
	return PINAuthValue(pin, salt), nil
}

// Enroll implements unlock.Enroller: it seals a new random 32-byte secret to the
// configured PCRs (signed PCRs with PublicKey, and a PIN) under systemd's primary key and returns a
// "systemd-tpm2" token as systemd 252 writes it, with the keyslot passphrase
// base64(secret).
func (p *Protector) Enroll(ctx context.Context) (*unlock.Enrollment, error) {
	policy := Policy{PCRs: p.cfg.PCRs, Bank: p.bank, PIN: p.cfg.EnrollWithPIN}
	if len(p.cfg.PublicKey) > 0 {
		sp, err := NewSignedPolicy(p.cfg.PublicKey, p.cfg.PublicKeyPCRs)
		if err != nil {
			return nil, err
		}
		policy.Signed = sp
	}
	var authValue []byte
	if policy.PIN {
		var err error
		if authValue, err = p.pinAuth(ctx, "new TPM2 PIN", nil); err != nil {
			return nil, err
		}
		defer wipe(authValue)
	}
	secret, err := NewSecret()
	if err != nil {
		return nil, err
	}
	defer wipe(secret)
	var sealed *Sealed
	var alg PrimaryAlg
	err = p.withTPM(ctx, func(t transport.TPM) error {
		parent, err := CreatePrimary(ctx, t, p.cfg.PrimaryAlg)
		if err != nil {
			return err
		}
		defer parent.Close(t)
		alg = parent.Alg
		sealed, err = Seal(ctx, t, parent, secret, policy, authValue)
		return err
	})
	if err != nil {
		return nil, err
	}
	pass := make([]byte, base64.StdEncoding.EncodedLen(len(secret)))
	base64.StdEncoding.Encode(pass, secret)
	p.log.Debug("enrolled", "pcrs", FormatPCRs(policy.PCRs), "bank", BankName(policy.bank()), "pin", policy.PIN, "primary", alg)
	return &unlock.Enrollment{Passphrase: pass, Token: SystemdTokenJSON(sealed, alg)}, nil
}
