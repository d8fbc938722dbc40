// Package luks2 reads and writes LUKS2 volumes: the two binary headers, the JSON
// metadata, keyslots (AF splitter, keyslot area encryption, PBKDF2 and Argon2 KDFs),
// digests and tokens. It does not map volumes; it recovers the volume key and describes
// the dm-crypt target (see Volume.CryptTarget) so that package blockdev can.
//
// Everything here follows the "LUKS2 On-Disk Format Specification" (version 1.1.x,
// cryptsetup project); section numbers below refer to that document.
//
// # What we read
//
// Both binary headers (§2, §3.1): magic "LUKS\xba\xbe" (primary) or "SKUL\xba\xbe"
// (secondary), version 2, a header size from the list of §2 (16 KiB to 4 MiB), and a
// checksum over the binary header and the JSON area with the checksum field zeroed
// (§3.1, sha256 when we write; sha1, sha256 and sha512 are read). The valid copy with
// the highest sequence id wins (§3.2). When the primary copy is damaged, the secondary
// is searched at every offset §3 lists (16 KiB … 4 MiB).
//
// The JSON metadata (§3.3–§3.10: config, keyslots, digests, segments, tokens) is
// validated strictly before anything uses it: bounded sizes and counts, object ids
// 0–31, decimal-string offsets, keyslot areas inside the keyslots area and
// overlapping neither each other nor the data segment, digests and tokens that
// reference existing keyslots and segments, KDF costs within cryptsetup's limits.
// The parser never panics and never allocates more than a small multiple of the
// header size, whatever the input.
//
// Member names are matched exactly, as cryptsetup's json-c matches them: an object
// that repeats a member, or a member that differs from a known field only by case,
// is refused (encoding/json alone would match case-insensitively and let the last
// duplicate win, and so read a different volume than cryptsetup).
//
// Ciphers are allow-listed where it matters. Unlock, UnlockKeyslot and CryptTarget
// refuse, with ErrUnsupportedCipher and before any KDF runs, a volume whose data
// segment names anything but aes, serpent or twofish in xts-plain64 (256/512-bit
// keys) or cbc-essiv:sha256 mode: never cipher_null, ECB or a mode without a
// per-sector IV, which an attacker could write into a header (its checksum has no
// key). Keyslot areas must be aes-xts-plain64, the only keyslot encryption we
// decrypt.
//
// LUKS1 volumes are refused with ErrLUKS1 (convert them with `cryptsetup convert
// --type luks2`). A volume whose config.requirements.mandatory (§3.10) names a
// requirement this package does not implement is opened read-only: every write and
// Volume.CryptTarget fail with ErrUnsupportedRequirement, while reading the metadata
// and recovering the volume key still work.
//
// # What we write
//
// Format writes what `cryptsetup luksFormat --type luks2` writes: aes-xts-plain64 with
// a 512-bit (default) or 256-bit key, a 16 KiB header (12 KiB of JSON), the keyslots
// area up to a 16 MiB data offset, one crypt segment with sector size 512 or 4096
// (4096 by default when the data area is a whole number of 4096-byte sectors), one
// pbkdf2 digest (§3.8) and keyslot 0 of type luks2 (§3.5) with an AF splitter of 4000
// stripes over sha256 (§4). Keyslot areas are encrypted with aes-xts-plain64 in
// 512-byte sectors numbered from 0 at the start of each area.
//
// The digest's PBKDF2 iterations are benchmarked to about 125 ms, except when the
// keyslot's KDF cost is fixed (KDFOptions.Iterations): then the digest has 1000
// iterations, as `cryptsetup luksFormat --pbkdf-force-iterations` writes it. Format
// zeroes both header areas and fills the keyslots area with an AES-256-CTR keystream
// under a fresh random key (random-looking, as cryptsetup's random wipe); with the
// same forced KDF it is faster than cryptsetup's luksFormat (BenchmarkFormat, make
// bench).
//
// KDFs (§3.6) are argon2id, argon2i and pbkdf2 (sha1, sha256, sha512), with explicit
// costs or a time target benchmarked on this machine. Without options the defaults are
// cryptsetup's: argon2id, 2 s, memory up to 1 GiB but at most half of the RAM,
// min(4, CPUs) lanes. MinimumCostKDF is the cost systemd-cryptenroll uses for random
// 256-bit secrets (pbkdf2-sha512, 1000 iterations).
//
// KDF cost on unlock is bounded (KDFLimits, Volume.SetKDFLimits): by default
// cryptsetup's limits (lib/crypto_backend/pbkdf_check.c: PBKDF2 up to 2^32-1
// iterations, Argon2 up to 4 GiB), Argon2 time up to 2^24 and 16 lanes, and Argon2
// memory no larger than the memory available at unlock (MemAvailable). A keyslot or
// digest beyond them is refused with ErrKDFCost before its KDF runs. Cancelling the
// context stops PBKDF2 (keyslot and digest) within a few milliseconds, leaving no
// work behind. Argon2 (golang.org/x/crypto/argon2) cannot be interrupted: Unlock
// returns at once, but the abandoned computation keeps its memory and one CPU until
// it finishes, its result then wiped (argon2id with t=4, 1 GiB, 2 lanes took 23 s on
// a loaded 2-core test machine). PBKDF2 is our own loop over our own HMAC so that
// the password and every key-derived buffer can be wiped (crypto/pbkdf2 takes the
// password as a string; it is the test oracle).
//
// Tokens (§3.7) are kept as the JSON they were written with: unknown token types and
// unknown fields round-trip unchanged, only the "keyslots" member is rewritten when a
// keyslot they reference is removed.
//
// # Crash safety
//
// Every metadata change bumps the sequence id and writes the two header copies one
// after the other, with an fsync after each. The copy written first is the one that is
// not the only valid copy on disk (normally the primary, the secondary if only the
// primary is valid), so at every instant at least one valid copy holds either the old
// or the new state, and readers take the valid copy with the highest sequence id.
// Keyslot material is written and synced before the metadata that references it;
// removing a keyslot drops it from the metadata first and wipes its area afterwards.
// Tests cut the writes after every write and at many byte offsets and reopen the
// result with the old and the new secret.
//
// # Exclusivity between processes
//
// Metadata writers take the same per-device lock cryptsetup takes
// (lib/utils_device_locking.c), so diskcryptd and cryptsetup never interleave
// metadata writes: an exclusive flock on the image file itself, or, for a block
// device, on the lock file DefaultLockDir/L_major:minor (/run/cryptsetup, created
// 0700 if missing; the file is removed on release, and a waiter that locked a removed
// file retries). Every change of a Volume opened with OpenFile in ReadWrite mode (and
// FormatFile) takes the lock, re-reads the headers under it when another process
// changed them, and works on what is on disk; Volume.LockMetadata holds it across
// several changes. A writer waits until its context ends and then fails with
// ErrDeviceLocked (changes without a context wait as cryptsetup does, indefinitely).
// A write computed from metadata that changed on disk meanwhile fails with
// ErrConcurrentUpdate instead of overwriting it. FormatFile opens a block device
// O_EXCL: Linux refuses it (EBUSY) while the device is mounted or mapped. Volumes
// opened with OpenDevice are not locked: their caller provides exclusivity. Readers
// take no lock (the two-copy commit keeps a valid copy at every instant). Where the
// platform has no flock (not unix), there is no inter-process locking.
//
// # Secrets
//
// Volume keys live in *VolumeKey, which redacts String and GoString, refuses to
// marshal to JSON or text and can be wiped. Temporary buffers holding derived keys or
// split key material are zeroed before they are released. Error messages never
// contain secrets.
//
// # Compatibility
//
// The package is portable: it imports nothing Linux-specific (signature probing is
// package blockdev/probe, which also holds the LUKS magics and header offsets), and
// `make lint` builds it for darwin, windows and freebsd.
//
// cryptsetup 2.6 and github.com/anatol/luks.go open what we write; we open what
// cryptsetup writes. Header backups are byte images of everything before the data
// offset, as `cryptsetup luksHeaderBackup` writes them, and each tool restores the
// other's.
package luks2
