package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

var (
	// ErrPolicyMismatch means the sealed object's PCR policy is not satisfied: the
	// PCRs it covers changed since enrolment (new firmware, boot loader, kernel or
	// Secure Boot state). Unlock with another protector, then re-enroll (reseal).
	ErrPolicyMismatch = errors.New("tpm: the PCRs this secret is sealed to changed since enrolment; unlock another way and reseal the TPM2 protector (diskcryptd reseal)")
	// ErrBadPIN means the TPM rejected the PIN. Each failure counts towards the
	// TPM's dictionary-attack lockout.
	ErrBadPIN = errors.New("tpm: wrong PIN")
	// ErrLockout means the TPM is in dictionary-attack lockout after too many
	// wrong PINs; wait for the lockout to expire (or clear it with the lockout
	// authorization) and try again.
	ErrLockout = errors.New("tpm: the TPM is in dictionary-attack lockout after too many failed PIN attempts; wait for it to expire or reset it with the lockout authorization")
	// ErrPINRequired means the token needs a PIN and no PIN source was given.
	ErrPINRequired = errors.New("tpm: token requires a PIN and no PIN source is configured")
	// ErrSignedPolicyUnsupported means the token's policy is one this package does
	// not unseal: systemd-pcrlock's NV-index policy (tpm2_pcrlock).
	ErrSignedPolicyUnsupported = errors.New("tpm: systemd-pcrlock policies (tpm2_pcrlock) are not supported")
	// ErrWrongTPM means the sealed object cannot be loaded under this TPM's
	// storage key: it was sealed by another TPM, or under another primary key.
	ErrWrongTPM = errors.New("tpm: the sealed object does not belong to this TPM's storage key")
)

// classify maps TPM response codes a caller acts on to this package's sentinels,
// keeping the TPM's own error in the chain.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch {
	case errors.Is(err, tpm2.TPMRCPolicyFail), errors.Is(err, tpm2.TPMRCValue) && op == "policy pcr":
		sentinel = ErrPolicyMismatch
	case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
		sentinel = ErrBadPIN
	case errors.Is(err, tpm2.TPMRCLockout):
		sentinel = ErrLockout
	case errors.Is(err, tpm2.TPMRCIntegrity) && op == "load":
		sentinel = ErrWrongTPM
	}
	if sentinel != nil {
		return fmt.Errorf("tpm: %s: %w (%w)", op, sentinel, err)
	}
	return fmt.Errorf("tpm: %s: %w", op, err)
}
