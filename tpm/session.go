package tpm

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// policySession is a salted policy session whose authorization HMAC this package
// computes itself (TPM 2.0 Library, Part 1, 19.6 "Session-based Authorizations").
//
// The same type serves as a salted HMAC session (startHMACSession), where the
// authValue is always part of the key.
//
// It exists because go-tpm v0.9.8 computes the HMAC key of its own sessions from a
// wrongly trimmed authValue: hmacKeyFromAuthValue (tpm2/sessions.go) walks the value
// from its end and cuts at every zero byte it meets instead of stopping at the first
// non-zero one, so an authValue with an inner zero byte is truncated at its first
// zero. SHA-256 of about one PIN in nine has such a byte ("8", "19"), and the TPM then
// answers TPM_RC_AUTH_FAIL to the right PIN. The TPM removes only trailing zeros
// (Part 1, 19.6.5, note 2), which hmacKey does.
//
// The session implements tpm2.Session, so go-tpm's command structs marshal the command
// and this type supplies and checks the authorization area. It does no parameter
// encryption itself: Unseal pairs it with a separate salted session for that.
type policySession struct {
	handle      tpm2.TPMHandle
	sessionKey  []byte
	nonceCaller tpm2.TPM2BNonce
	nonceTPM    tpm2.TPM2BNonce
	// authValue is the object's authValue (trailing zeros removed), included in the
	// HMAC key once TPM2_PolicyAuthValue has run (Part 1, 19.6.8).
	authValue []byte
}

var _ tpm2.Session = (*policySession)(nil)

// sessionNonceSize is the nonceCaller size; the TPM answers with a nonce as long.
const sessionNonceSize = 16

// startPolicySession starts a policy session salted with parent's public key: the
// salt is encrypted to parent (ECDH or RSA-OAEP with label "SECRET", Part 1, 11.4.10
// and Annex B/C), so the session key is unknown to anyone watching the bus.
func startPolicySession(t transport.TPM, parent *Key) (*policySession, error) {
	return startSession(t, parent, tpm2.TPMSEPolicy)
}

// startHMACSession starts a salted HMAC session that proves knowledge of authValue,
// for objects authorized by their authValue rather than a policy (userWithAuth).
func startHMACSession(t transport.TPM, parent *Key, authValue []byte) (*policySession, error) {
	s, err := startSession(t, parent, tpm2.TPMSEHMAC)
	if err != nil {
		return nil, err
	}
	s.authValue = bytes.Clone(trimAuthValue(authValue))
	return s, nil
}

func startSession(t transport.TPM, parent *Key, typ tpm2.TPMSE) (*policySession, error) {
	ek, err := tpm2.ImportEncapsulationKey(&parent.Public)
	if err != nil {
		return nil, fmt.Errorf("tpm: salt key: %w", err)
	}
	salt, encSalt, err := tpm2.CreateEncryptedSalt(rand.Reader, ek)
	if err != nil {
		return nil, fmt.Errorf("tpm: encrypt session salt: %w", err)
	}
	defer wipe(salt)
	s := &policySession{nonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, sessionNonceSize)}}
	if _, err := rand.Read(s.nonceCaller.Buffer); err != nil {
		return nil, err
	}
	rsp, err := tpm2.StartAuthSession{
		TPMKey:        parent.Handle,
		Bind:          tpm2.TPMRHNull,
		NonceCaller:   s.nonceCaller,
		EncryptedSalt: tpm2.TPM2BEncryptedSecret{Buffer: encSalt},
		SessionType:   typ,
		Symmetric:     tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		AuthHash:      tpm2.TPMAlgSHA256,
	}.Execute(t)
	if err != nil {
		return nil, classify("start session", err)
	}
	s.handle = tpm2.TPMHandle(rsp.SessionHandle.HandleValue())
	s.nonceTPM = rsp.NonceTPM
	// Part 1, 19.6.8: sessionKey = KDFa(hash, bind.authValue || salt, "ATH",
	// nonceTPM, nonceCaller, bits); the session is not bound.
	s.sessionKey = tpm2.KDFa(crypto.SHA256, salt, "ATH", s.nonceTPM.Buffer, s.nonceCaller.Buffer, sha256.Size*8)
	return s, nil
}

// flush flushes the session from the TPM and wipes its key.
func (s *policySession) flush(t transport.TPM) {
	if s.handle != tpm2.TPMRHNull && s.handle != 0 {
		_, _ = (tpm2.FlushContext{FlushHandle: s.handle}).Execute(t)
	}
	s.handle = tpm2.TPMRHNull
	wipe(s.sessionKey)
	wipe(s.authValue)
}

// policyAuthValue runs TPM2_PolicyAuthValue (Part 3, 23.17) and includes authValue
// in the HMAC of the command this session authorizes next.
func (s *policySession) policyAuthValue(t transport.TPM, authValue []byte) error {
	if _, err := (tpm2.PolicyAuthValue{PolicySession: s.handle}).Execute(t); err != nil {
		return err
	}
	wipe(s.authValue)
	s.authValue = bytes.Clone(trimAuthValue(authValue))
	return nil
}

// trimAuthValue removes trailing zero bytes, and only those, from an authValue
// (Part 1, 19.6.5, note 2).
func trimAuthValue(a []byte) []byte {
	return bytes.TrimRight(a, "\x00")
}

// hmacKey is sessionKey || authValue (Part 1, 19.6.8, equation 21 and 22).
func (s *policySession) hmacKey() []byte {
	k := make([]byte, 0, len(s.sessionKey)+len(s.authValue))
	return append(append(k, s.sessionKey...), s.authValue...)
}

// sessionHMAC computes HMAC-SHA256(key, pHash || nonceNewer || nonceOlder ||
// addNonces || sessionAttributes), the authorization HMAC of a command or a
// response (Part 1, 19.6.9 and 19.6.10).
func sessionHMAC(key, pHash, nonceNewer, nonceOlder, addNonces []byte, attrs byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(pHash)
	m.Write(nonceNewer)
	m.Write(nonceOlder)
	m.Write(addNonces)
	m.Write([]byte{attrs})
	return m.Sum(nil)
}

// sessionAttrs encodes TPMA_SESSION (Part 2, 8.4).
func sessionAttrs(a tpm2.TPMASession) byte {
	var b byte
	for i, set := range []bool{a.ContinueSession, a.AuditExclusive, a.AuditReset, false, false, a.Decrypt, a.Encrypt, a.Audit} {
		if set {
			b |= 1 << i
		}
	}
	return b
}

// Init implements tpm2.Session: the session is started by startPolicySession.
func (s *policySession) Init(transport.TPM) error {
	if s.handle == tpm2.TPMRHNull {
		return errors.New("tpm: policy session is not started")
	}
	return nil
}

// CleanupFailure implements tpm2.Session; the owner flushes the session.
func (s *policySession) CleanupFailure(transport.TPM) error { return nil }

// NonceTPM implements tpm2.Session.
func (s *policySession) NonceTPM() tpm2.TPM2BNonce { return s.nonceTPM }

// NewNonceCaller implements tpm2.Session.
func (s *policySession) NewNonceCaller() error {
	_, err := rand.Read(s.nonceCaller.Buffer)
	return err
}

// attrs are the session attributes sent: continueSession, so the owner flushes it
// whatever the outcome.
func (s *policySession) attrs() tpm2.TPMASession {
	return tpm2.TPMASession{ContinueSession: true}
}

// Authorize implements tpm2.Session: cpHash = SHA-256(commandCode || names ||
// parameters) (Part 1, 18.7), then the command HMAC.
func (s *policySession) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	h := sha256.New()
	_ = binary.Write(h, binary.BigEndian, uint32(cc))
	for _, n := range names {
		h.Write(n.Buffer)
	}
	h.Write(parms)
	key := s.hmacKey()
	defer wipe(key)
	mac := sessionHMAC(key, h.Sum(nil), s.nonceCaller.Buffer, s.nonceTPM.Buffer, addNonces, sessionAttrs(s.attrs()))
	return &tpm2.TPMSAuthCommand{
		Handle:        s.handle,
		Nonce:         s.nonceCaller,
		Attributes:    s.attrs(),
		Authorization: tpm2.TPM2BData{Buffer: mac},
	}, nil
}

// Validate implements tpm2.Session: rpHash = SHA-256(responseCode || commandCode ||
// parameters) (Part 1, 18.8), and the response HMAC must match.
func (s *policySession) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	s.nonceTPM = auth.Nonce
	if !auth.Attributes.ContinueSession {
		s.handle = tpm2.TPMRHNull
	}
	h := sha256.New()
	_ = binary.Write(h, binary.BigEndian, uint32(rc))
	_ = binary.Write(h, binary.BigEndian, uint32(cc))
	h.Write(parms)
	key := s.hmacKey()
	defer wipe(key)
	want := sessionHMAC(key, h.Sum(nil), s.nonceTPM.Buffer, s.nonceCaller.Buffer, nil, sessionAttrs(auth.Attributes))
	if !hmac.Equal(want, auth.Authorization.Buffer) {
		return errors.New("tpm: the TPM's response HMAC does not verify")
	}
	return nil
}

// IsEncryption implements tpm2.Session.
func (s *policySession) IsEncryption() bool { return false }

// IsDecryption implements tpm2.Session.
func (s *policySession) IsDecryption() bool { return false }

// Encrypt implements tpm2.Session (no parameter encryption in this session).
func (s *policySession) Encrypt([]byte) error { return nil }

// Decrypt implements tpm2.Session (no parameter encryption in this session).
func (s *policySession) Decrypt([]byte) error { return nil }

// Handle implements tpm2.Session.
func (s *policySession) Handle() tpm2.TPMHandle { return s.handle }
