// Package reencrypt rewrites the data of a LUKS2 volume under a new volume key
// (volume-key rotation), offline, in the on-disk format of cryptsetup's LUKS2
// re-encryption, so that either tool finishes a run the other started.
//
// # Sources
//
// The LUKS2 On-Disk Format Specification (cryptsetup project, version 1.1.x) defines
// segments (§3.4), keyslots (§3.5), digests (§3.8) and config.requirements (§3.10),
// but not re-encryption. That is defined by cryptsetup's implementation, which we
// read and did not copy: lib/luks2/luks2_reencrypt.c (hot and post segments, the
// step order, crash recovery, teardown), luks2_reencrypt_digest.c (the
// re-encryption digest), luks2_keyslot_reenc.c (the "reencrypt" keyslot),
// luks2_segment.c; and by what cryptsetup 2.6.1 writes, checked here with
// `cryptsetup reencrypt --init-only`, `--resume-only`, `repair` and runs killed
// with SIGKILL.
//
// # What a run writes
//
// Start (Rotate): a keyslot for the same passphrase holding a new random key, with a
// digest of its own bound to no segment (one metadata commit, as `cryptsetup
// luksAddKey --unbound`); then, in one commit (luks2.Volume.BeginReencrypt), the
// backup-previous and backup-final segments, the "reencrypt" keyslot (mode
// reencrypt, direction forward, resilience checksum or journal over the largest free
// gap of the keyslots area), the re-encryption digest and the mandatory
// requirement online-reencrypt-v2. The re-encryption digest is a pbkdf2 digest of
// "v2", the old key, the new key, the keyslot's mode, direction and area, and the
// backup segments, serialized byte for byte as cryptsetup does; both tools refuse to
// go on when it does not verify.
//
// Each hotzone [off, off+n) of the data then goes through, in this order:
//  1. resilience data written to the area and synced: for "checksum", the hash of
//     each block (4096 bytes, or the sector size) of the old ciphertext; for
//     "journal", the old ciphertext itself;
//  2. metadata commit of the hot segments: [new 0..off) [hotzone, flagged
//     in-reencryption, assigned to both digests] [old off+n..end);
//  3. the hotzone decrypted with the old key, encrypted with the new key, written and
//     synced;
//  4. metadata commit of the post segments: [new 0..off+n) [old off+n..end).
//
// After the last hotzone, one commit (luks2.Volume.FinishReencrypt) leaves the new
// segment alone and drops the old keyslots and digest, the reencrypt keyslot and its
// digest, the backup segments and the requirement; then the old keyslots' areas are
// overwritten with random data. The last hotzone's post commit and this one are the
// same commit, so there is no state in which the segments say "done" while the
// re-encryption metadata remains (a state cryptsetup would resume from offset 0).
//
// # Crash safety
//
// Metadata commits are those of package luks2 (two header copies, each synced). At
// every write, the disk is in one of: (a) post segments of the last finished
// hotzone, possibly with the next hotzone's resilience data written: resume goes on
// from there; (b) hot segments with the hotzone partly rewritten: recovery (ours or
// `cryptsetup repair`) restores it — "checksum" re-encrypts every block whose hash
// still equals the stored hash of the old ciphertext, "journal" re-encrypts the
// whole hotzone from the journal — and commits the post segments; (c) finished.
// Checksum resilience assumes that a block is either fully old or fully new after
// a crash (atomic 4096-byte writes, as cryptsetup assumes). Against a kill -9 the
// engine keeps that side itself when the data is page aligned: new ciphertext
// reaches the device only through write calls, never stores into a mapping
// (TestKillAtPoint kills a run mid-block and resumes it with both tools). Journal
// resilience does not need it, at the cost of writing every hotzone twice and smaller hotzones (the area,
// about 16 MiB by default). Interrupting a run (context cancelled, SIGINT in the CLI)
// stops after the current hotzone's post commit; the run returns ErrInterrupted.
//
// # Exclusivity
//
// Rotate and Resume work on the Device they are given and take no lock; `diskcryptd
// reencrypt` holds the device's metadata lock (package luks2, the lock cryptsetup
// takes) for the whole run, so a concurrent cryptsetup reencrypt or header change
// waits until the run ends, and opens a block device O_EXCL, which Linux refuses
// while it is mounted or mapped.
//
// # Speed
//
// While hotzone k is decrypted, encrypted and written, hotzone k+1 is read and
// checksummed; both stages split their work in 4 MiB chunks over GOMAXPROCS
// goroutines. Hotzones are 64 MiB by default (two metadata commits each). When the
// device is an *os.File (image or block device) and the data is page aligned, each
// hotzone is mapped read-only (mmap) instead of read: it is hashed in place and
// decrypted from the mapping into a scratch buffer, encrypted there and written
// with WriteAt. The new ciphertext is never stored into the mapping: plaintext never
// reaches the device's page cache, and a process killed mid-write leaves whole 4 KiB
// blocks (the kernel copies a write page by page), as checksum recovery needs —
// stores into a shared mapping can be cut every 16 bytes (the kill -9 loop found
// that).
//
// # Secrets
//
// Keys live in luks2.VolumeKey and xts.Cipher values that are wiped and closed when
// a run ends; plaintext exists only in the hotzone buffers. Errors and log lines
// carry offsets and sizes, never key material.
//
// # Limits
//
// Offline only: the volume must not be mapped. Only mode "reencrypt", direction
// forward, with checksum or journal resilience, over a data segment of dynamic size
// that keeps its place, is run. Rotate keeps cipher and sector size; Resume also
// finishes a cryptsetup run that changes the sector size (512 to 4096, say). Other
// runs cryptsetup started (decrypt, resilience none, encryption with a detached
// header) fail with ErrUnsupported and are left for cryptsetup.
//
// # In-place encryption
//
// Encrypt writes what `cryptsetup reencrypt --encrypt --reduce-device-size 2S`
// writes (S, the shift, is also the new data offset), and Resume finishes it, ours
// or cryptsetup's (started with --init-only, or interrupted): mode encrypt,
// direction backward, resilience datashift, the first S bytes of data moved to the
// end of the device. Encrypt first checks, reading only, that the data ends before
// the last 2S bytes (CheckTailFree: ext4, xfs and btrfs superblock sizes, or zeros
// on an unsigned device). Then: a start marker ("copying") in the free space just
// before the end, the copy of [0, S) to [size-S, size), the marker "copied" with
// the copy's sha256, and the header built in memory (luks2.Volume.
// BeginInPlaceEncryption) written keyslots area first, secondary copy, primary copy
// last; until a header copy reads as valid, calling Encrypt again finds the marker
// and goes on from the copy, never from the start it has begun to overwrite. The
// data is then encrypted in hotzones of S bytes from the end: the plaintext at
// logical offset off is read from where it lies (the moved copy for off 0, else its
// original place) and written encrypted S bytes further; hot and post segments are
// those of cryptsetup's reencrypt_make_hot_segments_encrypt_shift and
// _enc_create_segments_shift_after. A hotzone's source is overwritten only by the
// next hotzone, after this one's post commit, so after a crash it is rewritten from
// its source (cryptsetup's datashift recovery). At the end the moved copy
// (plaintext) is overwritten with random data before the final commit.
package reencrypt
