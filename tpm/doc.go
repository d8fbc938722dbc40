// Package tpm is diskcryptd's TPM 2.0 protector: it opens a TPM (the kernel's resource
// manager or a software TPM socket), creates the storage primary key exactly as
// systemd-cryptenroll does, seals 32-byte secrets to PCR values (and optionally a PIN),
// unseals them through salted, parameter-encrypted policy sessions, reads and extends
// PCRs, and reads and writes the LUKS2 tokens of systemd ("systemd-tpm2"). For clevis's
// tpm2 pin it unseals the sealed object (ClevisToken); package clevis parses the JWE.
//
// # Objects (TPM 2.0 Library, Part 1 and Part 3)
//
// The parent is a transient primary key under the owner hierarchy, created from
// systemd's template: ECC NIST P-256 (RSA-2048 where ECC is missing), restricted
// decryption key, AES-128-CFB symmetric, nameAlg SHA-256, empty unique and empty
// auth (Part 3, 24.1 TPM2_CreatePrimary). Tokens written by newer systemd name a
// persistent SRK at 0x81000001 ("tpm2_srk"); that key is used when a token names it.
//
// The sealed object is a keyed-hash object with attributes fixedTPM|fixedParent whose
// authPolicy is TPM2_PolicyPCR over the chosen PCRs of one bank (Part 3, 23.7),
// followed by TPM2_PolicyAuthValue (Part 3, 23.17) when a PIN is set. Its authValue is
// derived from the PIN as systemd does: SHA-256 of the PIN text, or, for tokens with
// "tpm2_salt", SHA-256 of the base64 text of PBKDF2-HMAC-SHA256(PIN, salt, 10000).
//
// # Sessions
//
// Every session is salted with the parent key, so its session key is unknown to a bus
// observer. Create sends the secret encrypted (decrypt attribute, AES-128-CFB) and
// Unseal returns it encrypted (encrypt attribute) through a separate salted HMAC
// session, Part 1, 21 "Session-based encryption".
//
// A PIN never crosses the bus, in the clear or hashed: the policy session that
// authorizes Unseal runs TPM2_PolicyAuthValue and proves knowledge of the authValue
// with an HMAC keyed by sessionKey || authValue (Part 1, 19.6). That session is this
// package's own (session.go), because go-tpm v0.9.8 truncates an authValue at its
// first zero byte when it keys that HMAC; TPM2_PolicyPassword, which would send the
// authValue as a cleartext password, is never used.
//
// # Errors
//
// A PCR policy that no longer matches is ErrPolicyMismatch; a wrong PIN is ErrBadPIN;
// the dictionary-attack lockout is ErrLockout. Every operation takes a context, checked
// before each TPM command. On a socket (swtpm) the context's deadline and its
// cancellation also end a wait for an answer; a connection so interrupted takes no
// further command, since the TPM's late answer would be read as the next one's. A
// character device (/dev/tpmrm0) cannot be interrupted: a command there ends when the
// TPM (or the kernel driver's timeout) ends it.
//
// # Tokens
//
// systemd-tpm2 tokens are written as systemd 252 writes them and read with the fields
// later versions add (tpm2_srk, tpm2_salt); systemd-pcrlock policies (tpm2_pcrlock)
// are recognised and refused with ErrSignedPolicyUnsupported. clevis tokens are
// package clevis's.
//
// # Signed PCR policies
//
// A token with "tpm2_pubkey" (base64 of a PEM RSA public key) and "tpm2_pubkey_pcrs"
// is sealed to TPM2_PolicyAuthorize by that key (Part 3, 23.16) instead of to today's
// PCR values: it unseals when the current values of those PCRs (PCR 11 for a unified
// kernel image) give a PolicyPCR digest the key's owner signed. Signatures come in
// systemd-measure's JSON ({"sha256":[{"pcrs":[11],"pkfp":…,"pol":…,"sig":…}]},
// systemd-stub leaves it at DefaultSignaturePath). The policy is built as systemd 252
// builds it: PolicyAuthorize (the key loaded with TPM2_LoadExternal under the owner
// hierarchy, its public area as systemd writes it), then PolicyPCR over "tpm2-pcrs",
// then PolicyAuthValue with a PIN. A signature for other PCR values is a
// *SignatureMismatchError (ErrPCRSignatureMismatch); none at all is ErrNoPCRSignature.
package tpm
