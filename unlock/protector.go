// Package unlock is the protector model: the ways a volume's keyslot passphrase is
// sealed into a LUKS2 token at enrolment and recovered from it at unlock, and the policy
// that tries a volume's tokens in order and reports why each one failed.
//
// A protector is to a LUKS2 token what an age Recipient/Identity is to a stanza. This
// package depends only on the interfaces below, never on a concrete protector (TPM2,
// KMS, Tang, recovery key); concrete protectors live in their own packages and import
// this one.
package unlock

import (
	"context"
	"errors"
	"fmt"
)

// ErrNotMine is returned by Protector.Unseal for a token it does not handle (another
// token type, or another TPM's blob): "not mine, try the next". Any other error is a
// real failure of a token this protector owns.
var ErrNotMine = errors.New("unlock: token not handled by this protector")

// Token is one LUKS2 token as stored in the volume's metadata.
type Token struct {
	// ID is the token's number in the LUKS2 "tokens" object.
	ID int
	// Type is the token's "type" field, e.g. "systemd-tpm2" or "clevis".
	Type string
	// Keyslots are the keyslots the token is bound to.
	Keyslots []int
	// JSON is the token's whole JSON object, exactly as stored.
	JSON []byte
	// VolumeUUID is the LUKS2 UUID of the volume the token was read from, for
	// protectors that bind their secret to the volume (KMIP's AAD); "" if unknown.
	VolumeUUID string
}

// Protector recovers a keyslot passphrase from a token.
type Protector interface {
	// Name names the protector in logs and reports ("tpm2", "recovery", ...).
	Name() string
	// Unseal returns the passphrase of the keyslots tok is bound to, or an error
	// wrapping ErrNotMine if tok is not this protector's. The caller owns and wipes the
	// returned slice.
	Unseal(ctx context.Context, tok Token) ([]byte, error)
}

// Enrollment is what a protector produces at enrolment: a fresh keyslot passphrase and
// the token that seals it. The caller adds a keyslot for Passphrase and the token bound
// to that keyslot in one metadata update, then wipes Passphrase.
type Enrollment struct {
	// Passphrase is the new keyslot's passphrase (for systemd-tpm2 tokens: the base64
	// text of the sealed 32-byte secret, as systemd-cryptenroll does).
	Passphrase []byte
	// Token is the token JSON object without its "keyslots" field; the caller sets it.
	Token map[string]any
}

// String redacts the passphrase, so that an Enrollment printed or logged (%v, %s,
// hclog) never shows it.
func (e *Enrollment) String() string {
	if e == nil {
		return "<nil>"
	}
	return fmt.Sprintf("unlock.Enrollment{Passphrase: [REDACTED %d bytes], Token type %v}", len(e.Passphrase), e.Token["type"])
}

// GoString redacts the passphrase for %#v.
func (e *Enrollment) GoString() string { return e.String() }

// MarshalJSON refuses: an Enrollment carries a secret.
func (e *Enrollment) MarshalJSON() ([]byte, error) {
	return nil, errors.New("unlock: an Enrollment carries a keyslot passphrase and is never marshalled")
}

// Enroller seals a new secret for a volume.
type Enroller interface {
	// Enroll creates a new random secret, seals it, and returns the keyslot
	// passphrase and the token.
	Enroll(ctx context.Context) (*Enrollment, error)
}
