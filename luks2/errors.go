package luks2

import (
	"errors"
	"fmt"
)

var (
	// ErrNotLUKS means that no LUKS header was found where one was expected.
	ErrNotLUKS = errors.New("luks2: not a LUKS device")
	// ErrLUKS1 means the device carries a LUKS1 header, which this package does not
	// support. Convert it with `cryptsetup convert --type luks2 DEVICE`.
	ErrLUKS1 = errors.New("luks2: device is LUKS1, which is unsupported; convert it with `cryptsetup convert --type luks2`")
	// ErrNoValidHeader means neither header copy is valid (bad magic, version,
	// checksum or metadata). Restore a header backup.
	ErrNoValidHeader = errors.New("luks2: no valid LUKS2 header copy found; restore a header backup")
	// ErrInvalidMetadata wraps every reason a header or its JSON metadata is rejected.
	ErrInvalidMetadata = errors.New("luks2: invalid metadata")
	// ErrUnsupportedRequirement means config.requirements.mandatory names a feature
	// this package does not implement: the volume is read-only here and must not be
	// activated by it.
	ErrUnsupportedRequirement = errors.New("luks2: volume has unsupported mandatory requirements")
	// ErrReadOnly means a write was attempted on a Volume opened read-only.
	ErrReadOnly = errors.New("luks2: volume opened read-only")
	// ErrNoKeyslotAccepts means no keyslot tried opens with the given passphrase or key.
	ErrNoKeyslotAccepts = errors.New("luks2: no keyslot accepts this key")
	// ErrKeyslotNotFound means the keyslot number does not exist.
	ErrKeyslotNotFound = errors.New("luks2: keyslot not found")
	// ErrKeyslotInUse means the requested keyslot number is already taken.
	ErrKeyslotInUse = errors.New("luks2: keyslot already in use")
	// ErrNoFreeKeyslot means all keyslot numbers or the keyslots area are used up.
	ErrNoFreeKeyslot = errors.New("luks2: no free keyslot or keyslot area space")
	// ErrMetadataFull means the JSON metadata would not fit the header's JSON area
	// (12 KiB by default): remove tokens or keyslots, or reformat with a larger header.
	ErrMetadataFull = errors.New("luks2: JSON metadata area full")
	// ErrTokenNotFound means the token id does not exist.
	ErrTokenNotFound = errors.New("luks2: token not found")
	// ErrTokenInUse means the requested token id is already taken.
	ErrTokenInUse = errors.New("luks2: token already in use")
	// ErrNoFreeToken means all 32 token ids are used.
	ErrNoFreeToken = errors.New("luks2: no free token id")
	// ErrInvalidToken means a token's JSON is not acceptable (§3.7: an object with a
	// string "type" and a "keyslots" array of existing keyslot ids).
	ErrInvalidToken = errors.New("luks2: invalid token")
	// ErrWrongVolumeKey means a volume key does not match the volume's digest.
	ErrWrongVolumeKey = errors.New("luks2: volume key does not match the volume digest")
	// ErrDeviceInUse is returned by Format when the device already carries data (a
	// LUKS header, a filesystem, swap or a partition table) and Force is not set. Use
	// errors.As with *ExistingSignatureError to learn what was found.
	ErrDeviceInUse = errors.New("luks2: device is not empty")
	// ErrUnsupported means a parameter (cipher, KDF, hash, sector size, key size) is
	// not supported by this package.
	ErrUnsupported = errors.New("luks2: unsupported parameter")
	// ErrUnsupportedCipher means the data segment or a keyslot area names an
	// encryption that is not on the allow-list (see Volume.Unlock): cipher_null, ECB,
	// a mode without a per-sector IV, or a key size the cipher does not take. A header
	// edited to name one is refused before any key is derived. It wraps ErrUnsupported.
	ErrUnsupportedCipher = fmt.Errorf("%w: encryption not allowed", ErrUnsupported)
	// ErrKDFCost means a keyslot's or digest's KDF asks for more than the Volume's
	// KDFLimits allow (by default cryptsetup's limits, and no more Argon2 memory than
	// the machine has available): the keyslot is skipped without running its KDF.
	ErrKDFCost = errors.New("luks2: KDF cost exceeds the limits")
	// ErrDeviceTooSmall means the device cannot hold the metadata and any data.
	ErrDeviceTooSmall = errors.New("luks2: device too small")
)

// ExistingSignatureError is returned (wrapping ErrDeviceInUse) when Format finds data
// on the device. Kind is what probe.Probe reported (for example "ext4", "LUKS2",
// "swap", "gpt").
type ExistingSignatureError struct {
	// Kind is the signature type, e.g. "ext4", "luks2", "swap", "gpt".
	Kind string
	// Desc is a human-readable description of what was found.
	Desc string
}

// Error implements error.
func (e *ExistingSignatureError) Error() string {
	return "luks2: device already contains " + e.Desc + "; refusing to format without force"
}

// Unwrap returns ErrDeviceInUse.
func (e *ExistingSignatureError) Unwrap() error { return ErrDeviceInUse }
