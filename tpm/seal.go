package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/crypto/pbkdf2"
)

// SecretSize is the size of the secrets this package seals, as systemd seals them.
const SecretSize = 32

// saltedPINIterations is systemd's PBKDF2 iteration count for salted PINs.
const saltedPINIterations = 10000

// PINAuthValue derives a sealed object's authValue from a PIN as systemd does: the
// SHA-256 of the PIN text; with a salt (token field "tpm2_salt", systemd ≥ 254) the
// PIN is first replaced by the base64 text of PBKDF2-HMAC-SHA256(PIN, salt, 10000,
// 32 bytes). The caller wipes the result.
func PINAuthValue(pin, salt []byte) []byte {
	if len(salt) > 0 {
		dk := pbkdf2.Key(pin, salt, saltedPINIterations, sha256.Size, sha256.New)
		b64 := make([]byte, base64.StdEncoding.EncodedLen(len(dk)))
		base64.StdEncoding.Encode(b64, dk)
		sum := sha256.Sum256(b64)
		wipe(dk)
		wipe(b64)
		return sum[:]
	}
	sum := sha256.Sum256(pin)
	return sum[:]
}

// Policy describes a sealed object's policy, in systemd's order: PolicyAuthorize by
// Signed's key if set, then PolicyPCR over PCRs of Bank, then PolicyAuthValue if PIN.
type Policy struct {
	// Signed, if set, binds the object to PCR values the key's owner signs
	// (systemd's tpm2_pubkey) rather than to today's values.
	Signed *SignedPolicy
	// PCRs are the PCR indexes the policy covers (may be empty).
	PCRs []int
	// Bank is the PCR bank (TPMAlgSHA256 if zero).
	Bank tpm2.TPMIAlgHash
	// PIN adds PolicyAuthValue: the object's authValue must be presented.
	PIN bool
}

func (p Policy) bank() tpm2.TPMIAlgHash {
	if p.Bank == 0 {
		return tpm2.TPMAlgSHA256
	}
	return p.Bank
}

// run executes PolicyPCR, and in a trial session PolicyAuthValue, in session h. In
// a real session the caller runs PolicyAuthValue through
// policySession.policyAuthValue, so the session knows to include the authValue in
// its HMAC; PolicyAuthorize of a signed policy comes before run, from the caller.
func (p Policy) run(t transport.TPM, h tpm2.TPMHandle, trial bool) error {
	if len(p.PCRs) > 0 {
		sel, err := pcrSelection(p.bank(), p.PCRs)
		if err != nil {
			return err
		}
		if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(t); err != nil {
			return classify("policy pcr", err)
		}
	}
	if p.PIN && trial {
		if _, err := (tpm2.PolicyAuthValue{PolicySession: h}).Execute(t); err != nil {
			return classify("policy auth value", err)
		}
	}
	return nil
}

// Digest computes the policy digest from the current PCR values with a trial session.
func (p Policy) Digest(ctx context.Context, t transport.TPM) ([]byte, error) {
	tc := withContext(ctx, t)
	sess, closeSess, err := tpm2.PolicySession(tc, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		return nil, fmt.Errorf("tpm: start trial session: %w", err)
	}
	defer func() { _ = closeSess() }()
	if p.Signed != nil {
		if err := p.Signed.trialAuthorize(tc, sess.Handle()); err != nil {
			return nil, err
		}
	}
	if err := p.run(tc, sess.Handle(), true); err != nil {
		return nil, err
	}
	rsp, err := (tpm2.PolicyGetDigest{PolicySession: sess.Handle()}).Execute(tc)
	if err != nil {
		return nil, fmt.Errorf("tpm: policy digest: %w", err)
	}
	return rsp.PolicyDigest.Buffer, nil
}

// Sealed is a sealed object: its private and public areas as TPM2_Create returns
// them, and the policy it was sealed with.
type Sealed struct {
	// Private is the TPM2B_PRIVATE contents (encrypted by the parent).
	Private tpm2.TPM2BPrivate
	// Public is the sealed object's public area.
	Public tpm2.TPM2BPublic
	// Policy is the policy the object is sealed to.
	Policy Policy
	// PolicyDigest is the object's authPolicy.
	PolicyDigest []byte
}

// Blob returns TPM2B_PRIVATE || TPM2B_PUBLIC, as systemd stores them in "tpm2-blob".
func (s *Sealed) Blob() []byte {
	return append(tpm2.Marshal(s.Private), tpm2.Marshal(s.Public)...)
}

// ParseBlob splits a "tpm2-blob" (or clevis jwk_priv||jwk_pub) into its areas.
func ParseBlob(b []byte) (tpm2.TPM2BPrivate, tpm2.TPM2BPublic, error) {
	if len(b) < 2 {
		return tpm2.TPM2BPrivate{}, tpm2.TPM2BPublic{}, errors.New("tpm: sealed blob is too short")
	}
	n := int(b[0])<<8 | int(b[1])
	if len(b) < 2+n+2 {
		return tpm2.TPM2BPrivate{}, tpm2.TPM2BPublic{}, errors.New("tpm: sealed blob is truncated")
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](b[:2+n])
	if err != nil {
		return tpm2.TPM2BPrivate{}, tpm2.TPM2BPublic{}, fmt.Errorf("tpm: sealed blob private area: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b[2+n:])
	if err != nil {
		return tpm2.TPM2BPrivate{}, tpm2.TPM2BPublic{}, fmt.Errorf("tpm: sealed blob public area: %w", err)
	}
	if _, err := pub.Contents(); err != nil {
		return tpm2.TPM2BPrivate{}, tpm2.TPM2BPublic{}, fmt.Errorf("tpm: sealed blob public area: %w", err)
	}
	return *priv, *pub, nil
}

// Seal seals secret (at most 128 bytes) under parent as a keyed-hash object with
// attributes fixedTPM|fixedParent and the given policy, computed from the current PCR
// values. authValue (from PINAuthValue) is required iff policy.PIN. The secret and the
// authValue travel encrypted in a session salted with parent.
func Seal(ctx context.Context, t transport.TPM, parent *Key, secret []byte, policy Policy, authValue []byte) (*Sealed, error) {
	if policy.PIN != (len(authValue) > 0) {
		return nil, errors.New("tpm: seal: a PIN policy needs an authValue and only it")
	}
	digest, err := policy.Digest(ctx, t)
	if err != nil {
		return nil, err
	}
	tmpl := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:    true,
			FixedParent: true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: digest},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, sha256.Size)}),
	}
	tc := withContext(ctx, t)
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{
			Handle: parent.Handle,
			Name:   parent.Name,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16,
				tpm2.Salted(parent.Handle, parent.Public),
				tpm2.AESEncryption(128, tpm2.EncryptIn)),
		},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			UserAuth: tpm2.TPM2BAuth{Buffer: authValue},
			Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(tc)
	if err != nil {
		return nil, classify("create sealed object", err)
	}
	return &Sealed{Private: rsp.OutPrivate, Public: rsp.OutPublic, Policy: policy, PolicyDigest: digest}, nil
}

// Unseal loads s under parent, satisfies its policy in a session salted with parent
// (presenting authValue if the policy has a PIN) and returns the secret, which comes
// back encrypted by a second salted session. A policy that the current PCRs do not
// satisfy is reported as ErrPolicyMismatch before the object is used, so it does not
// count towards dictionary-attack lockout. The caller wipes the result.
func Unseal(ctx context.Context, t transport.TPM, parent *Key, s *Sealed, authValue []byte) ([]byte, error) {
	return UnsealSigned(ctx, t, parent, s, authValue, nil)
}

// UnsealSigned is Unseal for objects whose policy may be signed (Policy.Signed):
// sigs holds the PCR signatures (systemd-measure's JSON) to authorize it with. A
// signed policy without a matching signature is ErrNoPCRSignature or a
// *SignatureMismatchError (errors.Is ErrPCRSignatureMismatch).
func UnsealSigned(ctx context.Context, t transport.TPM, parent *Key, s *Sealed, authValue []byte, sigs PCRSignatures) ([]byte, error) {
	tc := withContext(ctx, t)
	if s.Policy.Signed != nil && sigs == nil {
		return nil, ErrNoPCRSignature
	}
	if s.Policy.PIN && len(authValue) == 0 {
		return nil, ErrPINRequired
	}
	pub, err := s.Public.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpm: sealed object public area: %w", err)
	}
	if pub.Type != tpm2.TPMAlgKeyedHash {
		return nil, fmt.Errorf("tpm: sealed object has type 0x%x, not keyedhash", uint16(pub.Type))
	}
	load, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.Private,
		InPublic:     s.Public,
	}.Execute(tc)
	if err != nil {
		return nil, classify("load", err)
	}
	defer func() { _, _ = (tpm2.FlushContext{FlushHandle: load.ObjectHandle}).Execute(t) }()

	if len(pub.AuthPolicy.Buffer) == 0 {
		if !pub.ObjectAttributes.UserWithAuth {
			return nil, errors.New("tpm: sealed object has neither a policy nor userWithAuth")
		}
		return unsealWithAuth(tc, parent, load, authValue)
	}

	// The policy session is this package's own (session.go): it is salted with
	// parent and computes the HMAC over the authValue correctly, so the PIN's
	// authValue never crosses the bus, in any form.
	sess, err := startPolicySession(tc, parent)
	if err != nil {
		return nil, err
	}
	defer sess.flush(t)
	if s.Policy.Signed != nil {
		if err := s.Policy.Signed.authorize(tc, sess.Handle(), s.Policy.bank(), sigs); err != nil {
			return nil, fmt.Errorf("tpm: unseal (signed PCRs %s, bank %s): %w", FormatPCRs(s.Policy.Signed.PCRs), BankName(s.Policy.bank()), err)
		}
	}
	if err := s.Policy.run(tc, sess.Handle(), false); err != nil {
		return nil, err
	}
	if s.Policy.PIN {
		if err := sess.policyAuthValue(tc, authValue); err != nil {
			return nil, classify("policy auth value", err)
		}
	}
	got, err := (tpm2.PolicyGetDigest{PolicySession: sess.Handle()}).Execute(tc)
	if err != nil {
		return nil, fmt.Errorf("tpm: policy digest: %w", err)
	}
	if !bytes.Equal(got.PolicyDigest.Buffer, pub.AuthPolicy.Buffer) {
		return nil, fmt.Errorf("tpm: unseal (PCRs %v, bank %s): %w", s.Policy.PCRs, BankName(s.Policy.bank()), ErrPolicyMismatch)
	}
	enc, closeEnc, err := tpm2.HMACSession(tc, tpm2.TPMAlgSHA256, 16,
		tpm2.Salted(parent.Handle, parent.Public), tpm2.AESEncryption(128, tpm2.EncryptOut))
	if err != nil {
		return nil, fmt.Errorf("tpm: start encryption session: %w", err)
	}
	defer func() { _ = closeEnc() }()
	rsp, err := tpm2.Unseal{
		ItemHandle: tpm2.AuthHandle{Handle: load.ObjectHandle, Name: load.Name, Auth: sess},
	}.Execute(tc, enc)
	if err != nil {
		return nil, classify("unseal", err)
	}
	return rsp.OutData.Buffer, nil
}

// NewSecret returns SecretSize random bytes.
func NewSecret() ([]byte, error) {
	b := make([]byte, SecretSize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("tpm: random secret: %w", err)
	}
	return b, nil
}

// wipe zeroes b.
func wipe(b []byte) {
	clear(b)
}

// unsealWithAuth unseals an object without a policy (clevis without pcr_ids): a
// salted HMAC session of this package's proves knowledge of the authValue (which
// never crosses the bus), and a second salted session encrypts the response.
func unsealWithAuth(tc transport.TPM, parent *Key, load *tpm2.LoadResponse, authValue []byte) ([]byte, error) {
	sess, err := startHMACSession(tc, parent, authValue)
	if err != nil {
		return nil, err
	}
	defer sess.flush(tc)
	enc, closeEnc, err := tpm2.HMACSession(tc, tpm2.TPMAlgSHA256, 16,
		tpm2.Salted(parent.Handle, parent.Public), tpm2.AESEncryption(128, tpm2.EncryptOut))
	if err != nil {
		return nil, fmt.Errorf("tpm: start encryption session: %w", err)
	}
	defer func() { _ = closeEnc() }()
	rsp, err := tpm2.Unseal{
		ItemHandle: tpm2.AuthHandle{Handle: load.ObjectHandle, Name: load.Name, Auth: sess},
	}.Execute(tc, enc)
	if err != nil {
		return nil, classify("unseal", err)
	}
	return rsp.OutData.Buffer, nil
}
