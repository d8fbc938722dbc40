// Package tpmkey keeps a KMIP client's TLS key inside the TPM: an ECDSA P-256 signing
// key created under the TPM's storage primary key (systemd's ECC template), with
// fixedTPM and fixedParent set and the private part generated inside the TPM
// (sensitiveDataOrigin), so it never exists outside it. What is saved is the key's
// blob (TPM2B_PRIVATE, encrypted by the primary key, and TPM2B_PUBLIC) in a PEM file;
// copied to another machine it is useless: that TPM's primary key cannot load it.
//
// Signer is a crypto.Signer for crypto/tls: each Sign opens the TPM, recreates the
// primary key, loads the blob, signs the digest and flushes both (TPM2 Part 3,
// sections 24.1 CreatePrimary, 12.2 Load, 20.2 Sign).
package tpmkey

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskcryptd/diskcryptd/tpm"
)

// PEMType is the PEM block type of a key blob file.
const PEMType = "DISKCRYPTD TPM2 KEY"

// ErrWrongTPM is wrapped when the blob does not load on this TPM (another machine's
// key, or a TPM that was cleared).
var ErrWrongTPM = errors.New("tpmkey: the key does not load on this TPM (created on another TPM, or the TPM was cleared)")

// OpenFunc opens the TPM for one operation.
type OpenFunc func(ctx context.Context) (transport.TPMCloser, error)

func template() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// Create makes a new signing key in the TPM and returns its blob
// (TPM2B_PRIVATE || TPM2B_PUBLIC).
func Create(ctx context.Context, t transport.TPM) ([]byte, error) {
	t = tpm.WithContext(ctx, t)
	parent, err := tpm.CreatePrimary(ctx, t, tpm.PrimaryECC)
	if err != nil {
		return nil, err
	}
	defer parent.Close(t)
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     tpm2.New2B(template()),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: create signing key: %w", err)
	}
	return append(tpm2.Marshal(rsp.OutPrivate), tpm2.Marshal(rsp.OutPublic)...), nil
}

// EncodePEM wraps a blob in a PEM block for a file.
func EncodePEM(blob []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: PEMType, Bytes: blob})
}

// ReadFile reads a blob from a PEM file written by EncodePEM.
func ReadFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != PEMType {
		return nil, fmt.Errorf("tpmkey: %s holds no %q PEM block", path, PEMType)
	}
	return blk.Bytes, nil
}

// Signer signs with a TPM-resident key. It is safe for concurrent use (each Sign has
// its own TPM connection).
type Signer struct {
	open OpenFunc
	priv tpm2.TPM2BPrivate
	pub  tpm2.TPM2BPublic
	key  *ecdsa.PublicKey
}

var _ crypto.Signer = (*Signer)(nil)

// NewSigner returns a Signer for blob; the TPM is opened with open on each Sign.
func NewSigner(blob []byte, open OpenFunc) (*Signer, error) {
	priv, pub, err := tpm.ParseBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: %w", err)
	}
	area, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpmkey: public area: %w", err)
	}
	if area.Type != tpm2.TPMAlgECC || !area.ObjectAttributes.SignEncrypt || area.ObjectAttributes.Decrypt || area.ObjectAttributes.Restricted {
		return nil, errors.New("tpmkey: the blob is not an unrestricted ECC signing key")
	}
	parms, err := area.Parameters.ECCDetail()
	if err != nil || parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, errors.New("tpmkey: the key is not on NIST P-256")
	}
	pt, err := area.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("tpmkey: public point: %w", err)
	}
	x, y := new(big.Int).SetBytes(pt.X.Buffer), new(big.Int).SetBytes(pt.Y.Buffer)
	if !elliptic.P256().IsOnCurve(x, y) {
		return nil, errors.New("tpmkey: public point is not on P-256")
	}
	return &Signer{open: open, priv: priv, pub: pub, key: &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}}, nil
}

// Public implements crypto.Signer.
func (s *Signer) Public() crypto.PublicKey { return s.key }

// Sign implements crypto.Signer: an ASN.1 ECDSA signature of digest made by the TPM.
// The digest's hash (opts.HashFunc()) must be SHA-256, SHA-384 or SHA-512.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.SignContext(context.Background(), digest, opts)
}

// SignContext is Sign bounded by ctx.
func (s *Signer) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var hash tpm2.TPMIAlgHash
	switch opts.HashFunc() {
	case crypto.SHA256:
		hash = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		hash = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		hash = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("tpmkey: cannot sign a %v digest", opts.HashFunc())
	}
	tc, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	defer tc.Close()
	t := tpm.WithContext(ctx, tc)
	parent, err := tpm.CreatePrimary(ctx, t, tpm.PrimaryECC)
	if err != nil {
		return nil, err
	}
	defer parent.Close(t)
	loaded, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.priv,
		InPublic:     s.pub,
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWrongTPM, err)
	}
	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(t)
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: hash})},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: sign: %w", err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("tpmkey: signature: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer), new(big.Int).SetBytes(sig.SignatureS.Buffer)})
}
