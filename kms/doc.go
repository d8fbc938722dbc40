// Package kms is the KMIP protector: a volume's keyslot secret sealed by a
// key-encryption key (KEK) that lives in the datacenter's key manager and never
// leaves it, reached over KMIP with mutual TLS (github.com/ovh/kmip-go, KMIP 1.2–1.4).
//
// # What it stores
//
// One "diskcryptd-kmip" LUKS2 token per protector (Token; field by field in
// docs/tokens.md). In wrap mode it holds the 32-byte keyslot secret encrypted by the
// KMS with KMIP Encrypt, AES-256-GCM, a fresh 12-byte IV, a 16-byte tag and the
// additional authenticated data AAD(volume UUID, keyslot): a token copied onto another
// volume, or rebound to another keyslot, does not decrypt. In get mode (key managers
// without server-side encryption) the secret is a 32-byte SecretData or symmetric key
// object in the KMS, fetched with Get; the token holds only its UID. The keyslot
// passphrase is base64 of the secret, as for systemd-tpm2 tokens. Members a token
// carries that this version does not know are kept on rewrite.
//
// # What it promises
//
//   - Unseal returns the passphrase or an error that names each server and why it
//     failed (*Error, *ServerError, *KMIPError); errors.Is tells ErrUnreachable (no
//     server answered: try the next token) from ErrRefused and ErrNotActive (the KMS
//     said no: revoked, destroyed, unknown, wrong AAD). A token of another type is
//     unlock.ErrNotMine.
//   - Never a hung boot: every attempt (connect, TLS handshake, version negotiation,
//     response) is bounded by Timing.Attempt; servers are walked in the token's order
//     for at most Timing.Rounds rounds with full-jitter exponential backoff between
//     rounds; the caller's context (the daemon's token timeout) bounds the whole. A
//     KMIP refusal, or a certificate refused at TLS, is final for that server and is
//     not retried. One Protector opens at most Config.MaxConnections (4) connections
//     to a server at a time, and reuses the KMIP version a server negotiated.
//   - Mutual TLS only, TLS 1.2 or later; the server's certificate must chain to the
//     configured CA (never the system roots) and match the address's host name or IP.
//     The client certificate is the host's identity; its key may be any crypto.Signer
//     (a TPM-resident key).
//   - A get-mode object is released only while the KMS reports it Active: PyKMIP, for
//     one, still answers Get for a revoked object, so revocation is checked here too.
//   - Secrets never reach logs, errors, metrics or the token; buffers are wiped.
//   - Every attempt is counted per server and result (Metrics, exported as
//     diskcryptd_kms_requests_total and diskcryptd_kms_request_duration_seconds), and
//     DescribeRelease adds server, KEK UID and the request's correlation value (a
//     random KMIP Unique Batch Item ID) to the daemon's key-release audit record.
//
// # KEK rotation and revocation
//
// Rewrap decrypts with the token's KEK and encrypts with another, so a KEK can be
// rotated (KMIP Create + Rewrap, then Revoke of the old one) without touching the
// keyslot or the data; the caller replaces the token in one metadata commit. Revoking
// the KEK (or the get-mode secret) in the KMS stops every volume bound to it from
// unlocking through the KMS: remote crypto-erase, as far as this protector goes.
package kms
