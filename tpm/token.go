package tpm

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// Token types this package reads.
const (
	// TypeSystemd is systemd-cryptenroll's token type.
	TypeSystemd = "systemd-tpm2"
	// TypeClevis is clevis's token type: package clevis handles it (every pin);
	// Protector.Unseal passes it on as unlock.ErrNotMine.
	TypeClevis = "clevis"
)

// SystemdToken is a "systemd-tpm2" LUKS2 token: the fields systemd 252 writes, and
// those later versions add.
type SystemdToken struct {
	// Blob is "tpm2-blob": base64 of TPM2B_PRIVATE || TPM2B_PUBLIC.
	Blob string `json:"tpm2-blob"`
	// PCRs is "tpm2-pcrs": the PCR indexes of the PolicyPCR.
	PCRs []int `json:"tpm2-pcrs"`
	// PCRBank is "tpm2-pcr-bank" ("sha256" or "sha1").
	PCRBank string `json:"tpm2-pcr-bank,omitempty"`
	// PrimaryAlg is "tpm2-primary-alg" ("ecc" or "rsa").
	PrimaryAlg string `json:"tpm2-primary-alg,omitempty"`
	// PolicyHash is "tpm2-policy-hash": hex of the object's policy digest.
	PolicyHash string `json:"tpm2-policy-hash"`
	// PIN is "tpm2-pin": the policy includes PolicyAuthValue.
	PIN bool `json:"tpm2-pin"`
	// PubkeyPCRs is "tpm2_pubkey_pcrs": PCRs of a signed policy (systemd ≥ 252).
	PubkeyPCRs []int `json:"tpm2_pubkey_pcrs,omitempty"`
	// Pubkey is "tpm2_pubkey": base64 of the PEM key that signs PCR policies.
	Pubkey string `json:"tpm2_pubkey,omitempty"`
	// Salt is "tpm2_salt": base64 salt of the PIN (systemd ≥ 254).
	Salt string `json:"tpm2_salt,omitempty"`
	// SRK is "tpm2_srk": base64 of the serialized persistent SRK (systemd ≥ 255).
	SRK string `json:"tpm2_srk,omitempty"`
	// PCRLock is "tpm2_pcrlock": the policy uses systemd-pcrlock's NV index.
	PCRLock bool `json:"tpm2_pcrlock,omitempty"`
}

// ParseSystemdToken parses a "systemd-tpm2" token object. It reads the token as
// systemd and cryptsetup (json-c, exact member names) do: an object that repeats a
// member or carries a case variant of one ("tpm2-pcrs" and "TPM2-PCRS") is refused
// with luks2.ErrInvalidToken, since encoding/json alone would let the last one win
// and unseal under a policy other than the one systemd reads.
func ParseSystemdToken(b []byte) (*SystemdToken, error) {
	var hdr struct {
		Type string `json:"type"`
	}
	if err := luks2.DecodeStrict(b, &hdr); err != nil {
		return nil, fmt.Errorf("tpm: token JSON: %w", err)
	}
	if hdr.Type != TypeSystemd {
		return nil, fmt.Errorf("tpm: token type %q: %w", hdr.Type, unlock.ErrNotMine)
	}
	var t SystemdToken
	if err := luks2.DecodeStrict(b, &t); err != nil {
		return nil, fmt.Errorf("tpm: systemd-tpm2 token: %w", err)
	}
	if t.Blob == "" {
		return nil, errors.New("tpm: systemd-tpm2 token has no tpm2-blob")
	}
	return &t, nil
}

// Signed reports whether the token uses a signed PCR policy (PolicyAuthorize by
// tpm2_pubkey).
func (t *SystemdToken) Signed() bool { return t.Pubkey != "" || len(t.PubkeyPCRs) > 0 }

// Sealed decodes the token's sealed object and policy.
func (t *SystemdToken) Sealed() (*Sealed, error) {
	if t.PCRLock {
		return nil, ErrSignedPolicyUnsupported
	}
	var signed *SignedPolicy
	if t.Signed() {
		pemBytes, err := base64.StdEncoding.DecodeString(t.Pubkey)
		if err != nil {
			return nil, fmt.Errorf("tpm: tpm2_pubkey is not base64: %w", err)
		}
		if signed, err = NewSignedPolicy(pemBytes, t.PubkeyPCRs); err != nil {
			return nil, fmt.Errorf("tpm: tpm2_pubkey: %w", err)
		}
	}
	blob, err := base64.StdEncoding.DecodeString(t.Blob)
	if err != nil {
		return nil, fmt.Errorf("tpm: tpm2-blob is not base64: %w", err)
	}
	priv, pub, err := ParseBlob(blob)
	if err != nil {
		return nil, err
	}
	bank, err := ParseBank(t.PCRBank)
	if err != nil {
		return nil, err
	}
	for _, p := range t.PCRs {
		if p < 0 || p > MaxPCR {
			return nil, fmt.Errorf("tpm: tpm2-pcrs names PCR %d", p)
		}
	}
	s := &Sealed{Private: priv, Public: pub, Policy: Policy{PCRs: t.PCRs, Bank: bank, PIN: t.PIN, Signed: signed}}
	if t.PolicyHash != "" {
		if s.PolicyDigest, err = hex.DecodeString(t.PolicyHash); err != nil {
			return nil, fmt.Errorf("tpm: tpm2-policy-hash is not hex: %w", err)
		}
	}
	return s, nil
}

// SaltBytes returns the decoded PIN salt, or nil.
func (t *SystemdToken) SaltBytes() ([]byte, error) {
	if t.Salt == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(t.Salt)
	if err != nil {
		return nil, fmt.Errorf("tpm: tpm2_salt is not base64: %w", err)
	}
	return b, nil
}

// SystemdTokenJSON returns the token object for s as systemd 252 writes it, without
// "keyslots" (the caller adds it).
func SystemdTokenJSON(s *Sealed, alg PrimaryAlg) map[string]any {
	pcrs := s.Policy.PCRs
	if pcrs == nil {
		pcrs = []int{}
	}
	tok := map[string]any{
		"type":             TypeSystemd,
		"tpm2-blob":        base64.StdEncoding.EncodeToString(s.Blob()),
		"tpm2-pcrs":        pcrs,
		"tpm2-pcr-bank":    BankName(s.Policy.bank()),
		"tpm2-primary-alg": string(alg),
		"tpm2-policy-hash": hex.EncodeToString(s.PolicyDigest),
		"tpm2-pin":         s.Policy.PIN,
	}
	if sp := s.Policy.Signed; sp != nil {
		// As systemd 252 writes a signed policy: the PEM text, base64, and the
		// signed PCRs; "tpm2-pcrs" keeps the PCRs bound to today's values ([]).
		tok["tpm2_pubkey"] = base64.StdEncoding.EncodeToString(sp.PEM)
		tok["tpm2_pubkey_pcrs"] = sp.PCRs
	}
	return tok
}

// ClevisTPM2 is the "clevis"."tpm2" member of a clevis tpm2 JWE's protected header.
type ClevisTPM2 struct {
	// Hash is the name algorithm of the primary and sealed objects.
	Hash string `json:"hash"`
	// Key is the primary key algorithm ("ecc" or "rsa").
	Key string `json:"key"`
	// JWKPub is base64url of the sealed object's TPM2B_PUBLIC.
	JWKPub string `json:"jwk_pub"`
	// JWKPriv is base64url of the sealed object's TPM2B_PRIVATE.
	JWKPriv string `json:"jwk_priv"`
	// PCRBank is the PCR bank of the policy.
	PCRBank string `json:"pcr_bank,omitempty"`
	// PCRIDs are the policy's PCRs, comma-separated.
	PCRIDs string `json:"pcr_ids,omitempty"`
}

// ClevisToken is the tpm2 pin of a clevis token: package clevis parses the JWE
// (with go-jose) and hands the pin's header here to be unsealed.
type ClevisToken struct {
	// TPM2 is the pin configuration from the protected header.
	TPM2 ClevisTPM2
}

// Sealed decodes the clevis token's sealed object and PCR policy.
func (c *ClevisToken) Sealed() (*Sealed, error) {
	if h := strings.ToLower(c.TPM2.Hash); h != "" && h != "sha256" {
		return nil, fmt.Errorf("tpm: clevis tpm2 hash %q is not supported (only sha256)", c.TPM2.Hash)
	}
	dec := func(name, s string) ([]byte, error) {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("tpm: clevis %s is not base64url", name)
		}
		return b, nil
	}
	pub, err := dec("jwk_pub", c.TPM2.JWKPub)
	if err != nil {
		return nil, err
	}
	priv, err := dec("jwk_priv", c.TPM2.JWKPriv)
	if err != nil {
		return nil, err
	}
	privArea, pubArea, err := ParseBlob(append(priv, pub...))
	if err != nil {
		return nil, err
	}
	s := &Sealed{Private: privArea, Public: pubArea}
	if c.TPM2.PCRIDs != "" {
		pcrs, _, err := ParsePCRs(c.TPM2.PCRIDs)
		if err != nil {
			return nil, err
		}
		bankName := c.TPM2.PCRBank
		if bankName == "" {
			bankName = "sha1" // clevis's default bank
		}
		bank, err := ParseBank(bankName)
		if err != nil {
			return nil, err
		}
		s.Policy = Policy{PCRs: pcrs, Bank: bank}
	}
	return s, nil
}

// PrimaryAlg returns the clevis primary key algorithm.
func (c *ClevisToken) PrimaryAlg() (PrimaryAlg, error) {
	switch strings.ToLower(c.TPM2.Key) {
	case "", "ecc":
		return PrimaryECC, nil
	case "rsa":
		return PrimaryRSA, nil
	}
	return "", fmt.Errorf("tpm: clevis key algorithm %q is not supported", c.TPM2.Key)
}
