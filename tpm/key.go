package tpm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// PrimaryAlg is the algorithm of the storage primary key, as named in the
// "tpm2-primary-alg" token field.
type PrimaryAlg string

const (
	// PrimaryAuto tries ECC first and falls back to RSA, as systemd does.
	PrimaryAuto PrimaryAlg = ""
	// PrimaryECC is an ECC NIST P-256 primary key.
	PrimaryECC PrimaryAlg = "ecc"
	// PrimaryRSA is an RSA-2048 primary key.
	PrimaryRSA PrimaryAlg = "rsa"
)

// SRKHandle is the persistent handle of the storage root key that newer systemd
// creates and names in "tpm2_srk" (TCG "TPM v2.0 Provisioning Guidance", 7.5).
const SRKHandle tpm2.TPMHandle = 0x81000001

// Key is a loaded parent key: a transient primary (flushed by Close) or a persistent
// SRK (left in place).
type Key struct {
	// Handle is the key's handle.
	Handle tpm2.TPMHandle
	// Name is the key's TPM name.
	Name tpm2.TPM2BName
	// Public is the key's public area, used to salt sessions.
	Public tpm2.TPMTPublic
	// Alg is the key's algorithm.
	Alg       PrimaryAlg
	transient bool
}

// Close flushes a transient key; a persistent key is left in place.
func (k *Key) Close(t transport.TPM) error {
	if k == nil || !k.transient {
		return nil
	}
	if _, err := (tpm2.FlushContext{FlushHandle: k.Handle}).Execute(t); err != nil {
		return fmt.Errorf("tpm: flush primary key: %w", err)
	}
	return nil
}

// PrimaryTemplate returns systemd's storage primary template for alg (ECC or RSA):
// a restricted decryption key with AES-128-CFB, nameAlg SHA-256, fixedTPM,
// fixedParent, sensitiveDataOrigin and userWithAuth, empty unique field.
func PrimaryTemplate(alg PrimaryAlg) (tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		Restricted:          true,
		Decrypt:             true,
	}
	sym := tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
	}
	switch alg {
	case PrimaryECC:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgECC,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: sym,
				Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
				CurveID:   tpm2.TPMECCNistP256,
				KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}, nil
	case PrimaryRSA:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: sym,
				Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits:   2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("tpm: unknown primary key algorithm %q", alg)
}

// CreatePrimary creates systemd's storage primary key under the owner hierarchy
// (empty owner auth). PrimaryAuto tries ECC, then RSA. The caller closes the key.
func CreatePrimary(ctx context.Context, t transport.TPM, alg PrimaryAlg) (*Key, error) {
	if alg == PrimaryAuto {
		k, err := CreatePrimary(ctx, t, PrimaryECC)
		if err == nil || ctx.Err() != nil {
			return k, err
		}
		k, err2 := CreatePrimary(ctx, t, PrimaryRSA)
		if err2 != nil {
			return nil, errors.Join(err, err2)
		}
		return k, nil
	}
	tmpl, err := PrimaryTemplate(alg)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(withContext(ctx, t))
	if err != nil {
		return nil, fmt.Errorf("tpm: create %s primary key: %w", alg, err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		_, _ = (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(t)
		return nil, fmt.Errorf("tpm: primary key public area: %w", err)
	}
	return &Key{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub, Alg: alg, transient: true}, nil
}

// LoadPersistent returns the persistent key at handle. If wantName is not empty the
// key's name must equal it, so a replaced SRK is noticed.
func LoadPersistent(ctx context.Context, t transport.TPM, handle tpm2.TPMHandle, wantName []byte) (*Key, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(withContext(ctx, t))
	if err != nil {
		return nil, fmt.Errorf("tpm: read persistent key 0x%x: %w", uint32(handle), err)
	}
	if len(wantName) > 0 && !bytes.Equal(rsp.Name.Buffer, wantName) {
		return nil, fmt.Errorf("tpm: persistent key 0x%x is not the key the token was sealed under: %w", uint32(handle), ErrWrongTPM)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpm: persistent key public area: %w", err)
	}
	alg := PrimaryRSA
	if pub.Type == tpm2.TPMAlgECC {
		alg = PrimaryECC
	}
	return &Key{Handle: handle, Name: rsp.Name, Public: *pub, Alg: alg}, nil
}

// SerializedSRK is what systemd stores in "tpm2_srk": tpm2-tss's serialization of
// an ESYS_TR (IESYS_RESOURCE: TPM handle, TPM2B_NAME, resource type, then the
// public area), of which the handle and name matter here.
type SerializedSRK struct {
	// Handle is the persistent handle.
	Handle tpm2.TPMHandle
	// Name is the key's TPM name.
	Name []byte
}

// ParseSerializedSRK parses the "tpm2_srk" field's bytes.
func ParseSerializedSRK(b []byte) (*SerializedSRK, error) {
	if len(b) < 6 {
		return nil, errors.New("tpm: tpm2_srk is too short")
	}
	h := binary.BigEndian.Uint32(b)
	n := int(binary.BigEndian.Uint16(b[4:]))
	if len(b) < 6+n {
		return nil, errors.New("tpm: tpm2_srk name is truncated")
	}
	if h>>24 != 0x81 {
		return nil, fmt.Errorf("tpm: tpm2_srk handle 0x%x is not a persistent handle", h)
	}
	return &SerializedSRK{Handle: tpm2.TPMHandle(h), Name: bytes.Clone(b[6 : 6+n])}, nil
}
