// Package clevis reads and writes clevis's JWEs and LUKS2 tokens: the "tang",
// "tpm2" and "sss" (Shamir threshold) pins, nested as clevis nests them, so that a
// volume bound here opens with "clevis luks unlock" and one bound by
// "clevis luks bind" opens here.
//
// # What we read
//
// A LUKS2 token {"type":"clevis","keyslots":["N"],"jwe":{...}} whose "jwe" is the
// flattened JSON serialization (RFC 7516, 7.2.2) that "jose jwe fmt" writes, or the
// compact one (7.1). The JWE's protected header carries "clevis":{"pin":...}:
//
//   - tang: "alg":"ECDH-ES", "enc":"A256GCM", "epk", "kid" (the SHA-256 or SHA-1 RFC
//     7638 thumbprint of the server's exchange key) and "clevis"."tang" with the
//     server "url" and the advertised key set "adv". The ECDH-ES shared secret is
//     recovered from the server with the McCallum-Relyea exchange (package tang), the
//     content key derived with the Concat KDF (RFC 7518, 4.6.2).
//   - tpm2: "alg":"dir"; "clevis"."tpm2" carries a TPM2 sealed object (jwk_pub,
//     jwk_priv, pcr_bank, pcr_ids, key) whose sensitive data is the JWK (kty "oct")
//     of the content key. Unsealing is package tpm's.
//   - sss: "alg":"dir"; "clevis"."sss" carries t, the prime p (base64url, 32 bytes)
//     and "jwe", the compact JWEs of the n shares, each encrypted by a child pin. A
//     share is x||y, each as long as p; t of them give the content key by Lagrange
//     interpolation at 0 modulo p.
//
// JWE parsing, algorithm allow-lists ("alg" dir or ECDH-ES, "enc" A128GCM, A192GCM or
// A256GCM), the Concat KDF and AES-GCM are go-jose's. Tokens larger than MaxToken, sss
// nested deeper than MaxDepth, more than MaxShares shares, a threshold outside 1..n,
// a p that is not a 256-bit prime, shares outside [0,p), at x = 0 or with the same x,
// and JWEs with a "zip" (go-jose would inflate the plaintext) or "crit" header are
// refused with an error that says which.
//
// # What we write
//
// What clevis 19 writes: the same headers and the same token, with the JWE in the
// flattened serialization with an empty "encrypted_key". sss draws a fresh random
// safe prime per binding (as clevis's BN_generate_prime_ex(safe=1)) and random
// polynomial coefficients below it. The keyslot passphrase is the JWE's plaintext:
// clevis makes it with pwmake (256 bits of entropy, printable); we make it as the
// base64url text of 32 random bytes, also printable, so "clevis luks pass" prints it.
//
// # Trust
//
// Binding a tang pin needs an advertisement trusted by a pinned signing-key
// thumbprint ("thp", as clevis) or an explicit trust-on-first-use, which prints the
// thumbprints it trusted; never silently. Regen re-binds tang pins after the server
// rotated its keys, trusting the new advertisement only if a key the token already
// trusts (or a given thumbprint) signed it.
//
// # Unlock
//
// Protector implements unlock.Protector: it decrypts the token's JWE and returns
// the keyslot passphrase. Children of an sss pin are decrypted concurrently and the
// rest are cancelled once t have answered; Decrypt returns only after every child
// has returned (no goroutine outlives it). tpm2 pins queue for the TPM as long as
// their context allows, and on a TPM without a resource manager flush the handles
// another process left loaded and retry once. Errors name the pin path and, for tang,
// the server URL and reason.
package clevis
