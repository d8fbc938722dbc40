// Package tang is a client for Tang servers (the McCallum-Relyea exchange that
// clevis's tang pin uses): it fetches and verifies a server's advertisement
// (GET /adv, GET /adv/{thp}), and recovers a key with POST /rec/{kid}.
//
// # What we read
//
// An advertisement is a JWS (RFC 7515, JSON serialization) whose payload is a JWK Set
// (RFC 7517, 5) of P-256/P-384/P-521 keys: signing keys ("key_ops" includes
// "verify", alg ES256/ES384/ES512) and exchange keys ("key_ops" includes
// "deriveKey", alg "ECMR"). ParseAdv accepts an advertisement only when every
// signing key in its payload has a valid signature over it, as clevis requires
// ("jose jws ver -a"). JWS parsing, signature checks and RFC 7638 thumbprints are
// go-jose's; the algorithm allow-list is ES256/ES384/ES512.
//
// # Trust
//
// An advertisement says nothing about who made it. Callers pin a signing key by
// thumbprint (Adv.SignedBy: SHA-256 thumbprints as clevis makes them, SHA-1 ones
// accepted as clevis does), or trust on first use and say so.
//
// # The exchange
//
// The McCallum-Relyea exchange is the only cryptography here that go-jose lacks, so
// it is our own, on crypto/elliptic (ecmr.go). The server never sees the key: the
// client blinds the JWE's ephemeral public key with a fresh one of its own, the
// server multiplies by its private key, the client removes the blinding.
//
// # Robustness
//
// Every request has a per-attempt timeout, failed attempts are retried a bounded
// number of times with exponential backoff (network errors and 5xx answers only),
// the caller's context bounds the whole, and every error is an *Error naming the URL
// and what failed. HTTP connections are kept alive and shared across requests of one
// Client; nothing secret is cached. Redirects are not followed (clevis's curl does not
// follow them either): a 3xx answer is ErrStatus. An advertisement holds at most 16
// keys. Points from the server, the token's ephemeral key and the server's exchange
// key are checked to lie on the expected curve, the point at infinity is refused, and
// the blinding scalar, e·S and Z are wiped after the exchange.
package tang
