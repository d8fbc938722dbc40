package tpm

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultSignaturePath is where systemd-stub leaves the PCR signature of the booted
// unified kernel image, and where systemd-cryptsetup looks for it.
const DefaultSignaturePath = "/run/systemd/tpm2-pcr-signature.json"

// DefaultSignedPCRs are the PCRs a signed policy covers unless told otherwise:
// PCR 11, where systemd-stub measures the UKI's sections and systemd-pcrphase the
// boot phases.
var DefaultSignedPCRs = []int{11}

var (
	// ErrNoPCRSignature means a token uses a signed PCR policy and no signature file
	// is available.
	ErrNoPCRSignature = errors.New("tpm: the token uses a signed PCR policy and there is no PCR signature; pass --tpm2-signature FILE (systemd-measure's JSON, default " + DefaultSignaturePath + ")")
	// ErrPCRSignatureMismatch means the signature file holds no valid signature, by
	// the token's key, of the policy the current PCR values give: it was made for
	// another kernel, command line or boot phase, or by another key. Errors of type
	// *SignatureMismatchError match it with errors.Is.
	ErrPCRSignatureMismatch = errors.New("tpm: no signature by the token's key matches the current PCR values")
)

// SignatureMismatchError says why no signature applied.
type SignatureMismatchError struct {
	// Bank and PCRs are the signed PCRs of the token.
	Bank string
	PCRs []int
	// Policy is the PolicyPCR digest of the current PCR values, as systemd-measure
	// writes it in "pol".
	Policy []byte
	// Reason says what did not match.
	Reason string
}

// Error implements error.
func (e *SignatureMismatchError) Error() string {
	return fmt.Sprintf("tpm: no PCR signature applies to the current values of PCRs %s (bank %s, policy %x): %s; install the signature for the booted kernel (systemd-measure sign) or unlock another way",
		FormatPCRs(e.PCRs), e.Bank, e.Policy, e.Reason)
}

// Is makes errors.Is(err, ErrPCRSignatureMismatch) true.
func (e *SignatureMismatchError) Is(target error) bool { return target == ErrPCRSignatureMismatch }

// SignedPolicy is the signed part of a policy: TPM2_PolicyAuthorize (Part 3, 23.16)
// by an RSA key, approving a PolicyPCR over PCRs whose values the key owner signs
// (systemd's tpm2_pubkey and tpm2_pubkey_pcrs).
type SignedPolicy struct {
	// PEM is the public key as the token stores it (PEM text).
	PEM []byte
	// Key is the parsed key.
	Key *rsa.PublicKey
	// PCRs are the PCRs whose values are signed.
	PCRs []int
}

// NewSignedPolicy parses a PEM public key (SubjectPublicKeyInfo or PKCS #1) and
// returns the signed policy over pcrs. Only RSA keys are accepted, as systemd 252
// accepts them.
func NewSignedPolicy(pemBytes []byte, pcrs []int) (*SignedPolicy, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("tpm: the PCR signing public key is not PEM")
	}
	var pub any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, fmt.Errorf("tpm: PEM block %q is not a public key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm: PCR signing public key: %w", err)
	}
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("tpm: PCR signing key is %T; only RSA keys are supported, as in systemd 252", pub)
	}
	if n := k.N.BitLen(); n < 2048 || n > 4096 || n%8 != 0 {
		return nil, fmt.Errorf("tpm: PCR signing key has %d bits; want 2048 to 4096", n)
	}
	if len(pcrs) == 0 {
		return nil, errors.New("tpm: a signed PCR policy needs at least one PCR (e.g. 11)")
	}
	for _, p := range pcrs {
		if p < 0 || p > MaxPCR {
			return nil, fmt.Errorf("tpm: PCR %d out of range", p)
		}
	}
	return &SignedPolicy{PEM: bytes.Clone(pemBytes), Key: k, PCRs: slices.Sorted(slices.Values(pcrs))}, nil
}

// Fingerprint is systemd's "pkfp": hex SHA-256 of the key's PKCS #1 DER encoding.
func (sp *SignedPolicy) Fingerprint() string {
	sum := sha256.Sum256(x509.MarshalPKCS1PublicKey(sp.Key))
	return hex.EncodeToString(sum[:])
}

// public is the key's TPM public area as systemd loads it with TPM2_LoadExternal: an
// RSA key with decrypt|sign|userWithAuth, nameAlg SHA-256, no scheme, the exponent
// written out. The key's TPM name, and so the policy digest, depends on each field.
func (sp *SignedPolicy) public() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			Decrypt:      true,
			SignEncrypt:  true,
			UserWithAuth: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   tpm2.TPMKeyBits(sp.Key.N.BitLen()),
			Exponent:  uint32(sp.Key.E),
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: sp.Key.N.FillBytes(make([]byte, (sp.Key.N.BitLen()+7)/8))}),
	}
}

// Name is the key's TPM name: nameAlg || SHA-256(TPMT_PUBLIC) (Part 1, 16).
func (sp *SignedPolicy) Name() tpm2.TPM2BName {
	sum := sha256.Sum256(tpm2.Marshal(sp.public()))
	return tpm2.TPM2BName{Buffer: append([]byte{0x00, 0x0b}, sum[:]...)}
}

// PCRSignature is one entry of systemd-measure's signature JSON.
type PCRSignature struct {
	// PCRs are the signed PCRs.
	PCRs []int `json:"pcrs"`
	// PKFP is the signing key's fingerprint (SignedPolicy.Fingerprint).
	PKFP string `json:"pkfp"`
	// Policy is hex of the PolicyPCR digest that was signed.
	Policy string `json:"pol"`
	// Sig is base64 of the RSASSA-PKCS1-v1_5 SHA-256 signature of SHA-256(Policy),
	// the aHash of TPM2_PolicyAuthorize with an empty policyRef.
	Sig string `json:"sig"`
}

// PCRSignatures is systemd-measure's signature JSON (systemd-stub places it at
// DefaultSignaturePath): for each PCR bank name, the signed policies, e.g.
// {"sha256":[{"pcrs":[11],"pkfp":"…","pol":"…","sig":"…"}]}.
type PCRSignatures map[string][]PCRSignature

// maxSignatureFile bounds a signature file (one entry per boot phase and key).
const maxSignatureFile = 1 << 20

// ParsePCRSignatures parses systemd-measure's signature JSON. Entries are checked
// for form only; the TPM checks the signatures.
func ParsePCRSignatures(b []byte) (PCRSignatures, error) {
	if len(b) > maxSignatureFile {
		return nil, errors.New("tpm: PCR signature file is too large")
	}
	var s PCRSignatures
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("tpm: PCR signature JSON: %w", err)
	}
	for bank, entries := range s {
		if _, err := ParseBank(bank); err != nil {
			continue // a bank we do not know is not an error; it is never looked up
		}
		for i, e := range entries {
			if _, err := hex.DecodeString(e.Policy); err != nil {
				return nil, fmt.Errorf("tpm: PCR signature %s[%d]: \"pol\" is not hex", bank, i)
			}
			if _, err := base64.StdEncoding.DecodeString(e.Sig); err != nil {
				return nil, fmt.Errorf("tpm: PCR signature %s[%d]: \"sig\" is not base64", bank, i)
			}
			for _, p := range e.PCRs {
				if p < 0 || p > MaxPCR {
					return nil, fmt.Errorf("tpm: PCR signature %s[%d] names PCR %d", bank, i, p)
				}
			}
		}
	}
	return s, nil
}

// ReadPCRSignatures reads a signature file; path "" means DefaultSignaturePath. A
// missing file is ErrNoPCRSignature.
func ReadPCRSignatures(path string) (PCRSignatures, error) {
	p := path
	if p == "" {
		p = DefaultSignaturePath
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if path == "" {
				return nil, ErrNoPCRSignature
			}
			return nil, fmt.Errorf("%w: %w", ErrNoPCRSignature, err)
		}
		return nil, fmt.Errorf("tpm: PCR signature: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSignatureFile+1))
	if err != nil {
		return nil, fmt.Errorf("tpm: PCR signature %s: %w", p, err)
	}
	return ParsePCRSignatures(b)
}

// find returns the signature for policy over pcrs of bank by the key with
// fingerprint fp.
func (s PCRSignatures) find(bank string, pcrs []int, fp string, policy []byte) ([]byte, error) {
	mismatch := func(reason string) error {
		return &SignatureMismatchError{Bank: bank, PCRs: pcrs, Policy: policy, Reason: reason}
	}
	entries := s[bank]
	if len(entries) == 0 {
		return nil, mismatch("the signature file has no signature for this PCR bank")
	}
	reason := "no signature for these PCRs"
	for _, e := range entries {
		if !slices.Equal(slices.Sorted(slices.Values(e.PCRs)), pcrs) {
			continue
		}
		if !strings.EqualFold(e.PKFP, fp) {
			reason = "signed by another key"
			continue
		}
		pol, err := hex.DecodeString(e.Policy)
		if err != nil || !bytes.Equal(pol, policy) {
			reason = "signed for other PCR values (another kernel, command line or boot phase)"
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(e.Sig)
		if err != nil {
			return nil, mismatch("signature is not base64")
		}
		return sig, nil
	}
	return nil, mismatch(reason)
}

// nullTicket is the TPMT_TK_VERIFIED a trial session's TPM2_PolicyAuthorize takes.
var nullTicket = tpm2.TPMTTKVerified{Tag: tpm2.TPMSTVerified, Hierarchy: tpm2.TPMRHNull}

// trialAuthorize extends a trial session with TPM2_PolicyAuthorize by the key.
func (sp *SignedPolicy) trialAuthorize(t transport.TPM, h tpm2.TPMHandle) error {
	_, err := tpm2.PolicyAuthorize{
		PolicySession:  h,
		ApprovedPolicy: tpm2.TPM2BDigest{},
		PolicyRef:      tpm2.TPM2BDigest{},
		KeySign:        sp.Name(),
		CheckTicket:    nullTicket,
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("tpm: policy authorize (trial): %w", err)
	}
	return nil
}

// authorize satisfies the signed part of a policy in a real session (as systemd
// does): TPM2_PolicyPCR over the signed PCRs, read the digest, find its signature,
// load the key (TPM2_LoadExternal under the owner hierarchy, so its ticket is
// valid), TPM2_VerifySignature, then TPM2_PolicyAuthorize with the ticket, which
// replaces the session's digest by the key's authorization.
func (sp *SignedPolicy) authorize(t transport.TPM, h tpm2.TPMHandle, bank tpm2.TPMIAlgHash, sigs PCRSignatures) error {
	sel, err := pcrSelection(bank, sp.PCRs)
	if err != nil {
		return err
	}
	if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(t); err != nil {
		return classify("policy pcr", err)
	}
	got, err := (tpm2.PolicyGetDigest{PolicySession: h}).Execute(t)
	if err != nil {
		return fmt.Errorf("tpm: policy digest: %w", err)
	}
	approved := got.PolicyDigest.Buffer
	if sigs == nil {
		return ErrNoPCRSignature
	}
	sig, err := sigs.find(BankName(bank), sp.PCRs, sp.Fingerprint(), approved)
	if err != nil {
		return err
	}
	load, err := tpm2.LoadExternal{InPublic: tpm2.New2B(sp.public()), Hierarchy: tpm2.TPMRHOwner}.Execute(t)
	if err != nil {
		return classify("load PCR signing key", err)
	}
	defer func() { _, _ = (tpm2.FlushContext{FlushHandle: load.ObjectHandle}).Execute(t) }()
	if !bytes.Equal(load.Name.Buffer, sp.Name().Buffer) {
		return fmt.Errorf("tpm: the TPM names the PCR signing key %x, not %x", load.Name.Buffer, sp.Name().Buffer)
	}
	aHash := sha256.Sum256(approved) // || policyRef, which is empty
	vrsp, err := tpm2.VerifySignature{
		KeyHandle: load.ObjectHandle,
		Digest:    tpm2.TPM2BDigest{Buffer: aHash[:]},
		Signature: tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgRSASSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
				Hash: tpm2.TPMAlgSHA256,
				Sig:  tpm2.TPM2BPublicKeyRSA{Buffer: sig},
			}),
		},
	}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCSignature) || errors.Is(err, tpm2.TPMRCValue) || errors.Is(err, tpm2.TPMRCSize) {
			return fmt.Errorf("%w (%w)", &SignatureMismatchError{Bank: BankName(bank), PCRs: sp.PCRs, Policy: approved,
				Reason: "the TPM rejected the signature"}, err)
		}
		return fmt.Errorf("tpm: verify PCR signature: %w", err)
	}
	if _, err := (tpm2.PolicyAuthorize{
		PolicySession:  h,
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: approved},
		PolicyRef:      tpm2.TPM2BDigest{},
		KeySign:        load.Name,
		CheckTicket:    vrsp.Validation,
	}).Execute(t); err != nil {
		return classify("policy authorize", err)
	}
	return nil
}
