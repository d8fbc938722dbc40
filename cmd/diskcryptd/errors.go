package main

import (
	"io/fs"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// errorMapping ties a sentinel error of the packages below to an exit code and a hint.
type errorMapping struct {
	err  error
	code int
	hint string
}

// errorMap lists the sentinels the CLI branches on, most specific first.
func errorMap() []errorMapping {
	return []errorMapping{
		{luks2.ErrUnsupportedCipher, exitDevice, "the header names an encryption diskcryptd refuses (cipher_null, ECB, a mode without a per-sector IV); if nobody chose it, the header was edited: restore a header backup"},
		{tpm.ErrPolicyMismatch, exitPermission, "the measured boot state differs from enrolment; reseal the TPM2 protector with another key: diskcryptd reseal --key-file - DEVICE (the recovery key or a passphrase on stdin); at boot, reseal=tpm2 in the configuration does it after a KMS, Tang or key-file fallback"},
		{tpm.ErrPCRSignatureMismatch, exitPermission, "the PCR signature is for another kernel or boot phase: install the signature of the booted UKI (systemd-measure sign) or pass --tpm2-signature FILE"},
		{tpm.ErrNoPCRSignature, exitPermission, "pass --tpm2-signature FILE, or set tpm2-signature in the configuration"},
		{tpm.ErrLockout, exitPermission, "wait for the TPM's lockout to expire, or reset it with the lockout authorization"},
		{tpm.ErrBadPIN, exitPermission, ""},
		{unlock.ErrLocked, exitPermission, "unlock with a passphrase or the recovery key: diskcryptd unlock --key-file FILE DEVICE NAME"},
		{luks2.ErrKDFCost, exitPermission, "a keyslot's KDF asks for more memory or work than this machine allows (cryptsetup's limits, available RAM); use another keyslot, or open it where more memory is available"},
		{luks2.ErrNoKeyslotAccepts, exitPermission, "check the key file (cryptsetup semantics: the whole file is the key, a trailing newline included)"},
		{luks2.ErrDeviceInUse, exitDevice, "check the device name; to destroy what is on it, add --force"},
		{luks2.ErrLUKS1, exitDevice, ""},
		{luks2.ErrNotLUKS, exitDevice, "check the device name, or restore a header backup (diskcryptd header restore)"},
		{luks2.ErrNoValidHeader, exitDevice, ""},
		{luks2.ErrInvalidMetadata, exitDevice, "restore a header backup (diskcryptd header restore) or try diskcryptd repair"},
		{luks2.ErrUnsupportedRequirement, exitDevice, "this volume needs a feature diskcryptd does not implement; use cryptsetup for it"},
		{luks2.ErrDeviceTooSmall, exitDevice, ""},
		{daemon.ErrNotBlockDevice, exitDevice, "attach an image file to a loop device first: losetup -f --show IMAGE"},
		{luks2.ErrDeviceLocked, exitBusy, "another process (diskcryptd or cryptsetup) is changing this device's metadata; retry when it is done"},
		{luks2.ErrConcurrentUpdate, exitBusy, "the header changed while this command ran; run it again"},
		{blockdev.ErrMappingExists, exitBusy, "a mapping with that name exists: pick another name or lock it first"},
		{blockdev.ErrMappingNotFound, exitDevice, "see diskcryptd status for the mapped volumes"},
		// Last: a path that does not exist is a wrong device (key files that do not
		// exist are usage errors, marked where they are opened).
		{fs.ErrNotExist, exitDevice, "check the device path"},
	}
}
