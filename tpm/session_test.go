package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// busRecorder is a bus sniffer: it keeps every command sent to the TPM.
type busRecorder struct {
	mu   sync.Mutex
	t    transport.TPM
	cmds [][]byte
}

func (r *busRecorder) Send(cmd []byte) ([]byte, error) {
	r.mu.Lock()
	r.cmds = append(r.cmds, bytes.Clone(cmd))
	r.mu.Unlock()
	return r.t.Send(cmd)
}

// commandCodes returns the command code of each recorded command.
func (r *busRecorder) commandCodes() []tpm2.TPMCC {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ccs []tpm2.TPMCC
	for _, c := range r.cmds {
		if len(c) >= 10 {
			ccs = append(ccs, tpm2.TPMCC(binary.BigEndian.Uint32(c[6:10])))
		}
	}
	return ccs
}

// sawBytes reports whether any recorded command contains b.
func (r *busRecorder) sawBytes(b []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cmds {
		if bytes.Contains(c, b) {
			return true
		}
	}
	return false
}

// sniffedTPM starts a swtpm whose dictionary-attack lockout allows many wrong PINs,
// records its bus, and creates a primary key (flushed at cleanup) through it.
func sniffedTPM(t *testing.T) (context.Context, *busRecorder, *Key) {
	t.Helper()
	_, raw := openSwtpm(t)
	setMaxTries(t, raw, 1000)
	ctx := testCtx(t)
	bus := &busRecorder{t: raw}
	parent, err := CreatePrimary(ctx, bus, PrimaryECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = parent.Close(bus) })
	return ctx, bus, parent
}

// tpmCCPolicyPassword is TPM2_PolicyPassword (Part 2, 6.5.2).
const tpmCCPolicyPassword tpm2.TPMCC = 0x18C

// innerZeroPINs are PINs whose SHA-256 (systemd's authValue) has a zero byte that is
// not trailing: go-tpm v0.9.8 truncates their HMAC key.
var innerZeroPINs = []string{"8", "19", "9"}

func TestInnerZeroPINsAreWhatTheyClaim(t *testing.T) {
	for _, pin := range innerZeroPINs {
		a := PINAuthValue([]byte(pin), nil)
		if bytes.IndexByte(trimAuthValue(a), 0) < 0 {
			t.Errorf("SHA-256(%q) = %x has no inner zero byte", pin, a)
		}
	}
}

// TestSessionHMACKnownAnswer checks the command HMAC of a policy session whose
// authValue has an inner and a trailing zero byte against a value computed
// independently with Python's hmac module:
//
//	/usr/bin/python3 -c 'import hmac,hashlib; print(hmac.new(bytes(range(1,33))+bytes.fromhex("2c62423200aa"),
//	  bytes.fromhex("11"*32)+bytes.fromhex("22"*16)+bytes.fromhex("33"*16)+bytes.fromhex("44"*16)+b"\x01",
//	  hashlib.sha256).hexdigest())'
//
// The key is sessionKey 01..20 followed by authValue 2c 62 42 32 00 aa (its trailing
// zero removed). go-tpm v0.9.8 would have used 2c 62 42 32 only.
func TestSessionHMACKnownAnswer(t *testing.T) {
	sessionKey := make([]byte, 32)
	for i := range sessionKey {
		sessionKey[i] = byte(i + 1)
	}
	s := &policySession{sessionKey: sessionKey}
	s.authValue = bytes.Clone(trimAuthValue([]byte{0x2c, 0x62, 0x42, 0x32, 0x00, 0xaa, 0x00}))
	got := sessionHMAC(s.hmacKey(), bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x22}, 16),
		bytes.Repeat([]byte{0x33}, 16), bytes.Repeat([]byte{0x44}, 16), sessionAttrs(s.attrs()))
	const want = "392010ff5c4879458f4a42b6d159e6481175812ab935dc25f9f49cf51b1fe8c5"
	if hex.EncodeToString(got) != want {
		t.Fatalf("HMAC = %x, want %s", got, want)
	}
}

func TestSessionAttrs(t *testing.T) {
	for _, tc := range []struct {
		a    tpm2.TPMASession
		want byte
	}{
		{tpm2.TPMASession{}, 0},
		{tpm2.TPMASession{ContinueSession: true}, 0x01},
		{tpm2.TPMASession{Decrypt: true}, 0x20},
		{tpm2.TPMASession{Encrypt: true, ContinueSession: true}, 0x41},
		{tpm2.TPMASession{Audit: true}, 0x80},
	} {
		if got := sessionAttrs(tc.a); got != tc.want {
			t.Errorf("%+v: got %#x, want %#x", tc.a, got, tc.want)
		}
	}
}

// TestPINNeverInClear seals to PINs whose authValue has inner zero bytes, unseals
// while recording the bus, and checks that neither TPM2_PolicyPassword nor the
// authValue ever crossed it. The code this replaced presented such authValues as a
// cleartext password and fails here.
func TestPINNeverInClear(t *testing.T) {
	ctx, bus, parent := sniffedTPM(t)
	pins := append([]string{"1234", "correct horse"}, innerZeroPINs...)
	for _, pin := range pins {
		t.Run(pin, func(t *testing.T) {
			auth := PINAuthValue([]byte(pin), nil)
			secret := sha256.Sum256([]byte("secret for " + pin))
			for _, policy := range []Policy{{PCRs: []int{7}, PIN: true}, {PIN: true}} {
				s, err := Seal(ctx, bus, parent, secret[:], policy, auth)
				if err != nil {
					t.Fatal(err)
				}
				got, err := Unseal(ctx, bus, parent, s, auth)
				if err != nil {
					t.Fatalf("unseal with the right PIN: %v", err)
				}
				if !bytes.Equal(got, secret[:]) {
					t.Fatal("unsealed a different secret")
				}
				if _, err := Unseal(ctx, bus, parent, s, PINAuthValue([]byte(pin+"x"), nil)); !errors.Is(err, ErrBadPIN) {
					t.Fatalf("wrong PIN: got %v, want ErrBadPIN", err)
				}
			}
			for _, cc := range bus.commandCodes() {
				if cc == tpmCCPolicyPassword {
					t.Fatal("TPM2_PolicyPassword was sent: the authValue crossed the bus in the clear")
				}
			}
			if bus.sawBytes(trimAuthValue(auth)) {
				t.Fatal("the PIN's authValue crossed the bus in the clear")
			}
			if bus.sawBytes(secret[:]) {
				t.Fatal("the secret crossed the bus in the clear")
			}
		})
	}
}

// TestGoTPMTruncatesInnerZeroAuth documents why policySession exists: go-tpm
// v0.9.8's own policy session computes a wrong HMAC for an authValue with an inner
// zero byte, and the TPM refuses the right PIN. If this test fails, go-tpm was fixed
// and policySession could give way to it.
func TestGoTPMTruncatesInnerZeroAuth(t *testing.T) {
	_, tp := openSwtpm(t)
	setMaxTries(t, tp, 1000)
	ctx := testCtx(t)
	parent, err := CreatePrimary(ctx, tp, PrimaryECC)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close(tp)
	auth := PINAuthValue([]byte(innerZeroPINs[0]), nil)
	s, err := Seal(ctx, tp, parent, make([]byte, 32), Policy{PIN: true}, auth)
	if err != nil {
		t.Fatal(err)
	}
	load, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.Private, InPublic: s.Public,
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = (tpm2.FlushContext{FlushHandle: load.ObjectHandle}).Execute(tp) }()
	sess, closeSess, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = closeSess() }()
	if _, err := (tpm2.PolicyAuthValue{PolicySession: sess.Handle()}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	_, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: load.ObjectHandle, Name: load.Name, Auth: sess}}.Execute(tp)
	if !errors.Is(err, tpm2.TPMRCAuthFail) {
		t.Fatalf("go-tpm's session with an inner-zero authValue: got %v, want TPM_RC_AUTH_FAIL (the upstream bug)", err)
	}
}

// TestUnsealUserWithAuth unseals objects authorized by their authValue, not a policy
// (userWithAuth, as clevis seals without PCRs, here with an authValue): the HMAC
// session is this package's own, so inner zero bytes work and the authValue never
// crosses the bus.
func TestUnsealUserWithAuth(t *testing.T) {
	ctx, bus, parent := sniffedTPM(t)
	for _, pin := range append([]string{"", "1234"}, innerZeroPINs...) {
		t.Run("pin "+pin, func(t *testing.T) {
			var auth []byte
			if pin != "" {
				auth = PINAuthValue([]byte(pin), nil)
			}
			secret := sha256.Sum256([]byte("user with auth " + pin))
			rsp, err := tpm2.Create{
				ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name,
					Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Salted(parent.Handle, parent.Public), tpm2.AESEncryption(128, tpm2.EncryptIn))},
				InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
					UserAuth: tpm2.TPM2BAuth{Buffer: auth},
					Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret[:]}),
				}},
				InPublic: tpm2.New2B(tpm2.TPMTPublic{
					Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
					ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true},
					Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
				}),
			}.Execute(withContext(ctx, bus)) // retries TPM_RC_RETRY
			if err != nil {
				t.Fatal(err)
			}
			s := &Sealed{Private: rsp.OutPrivate, Public: rsp.OutPublic}
			got, err := Unseal(ctx, bus, parent, s, auth)
			if err != nil {
				t.Fatalf("unseal: %v", err)
			}
			if !bytes.Equal(got, secret[:]) {
				t.Fatal("unsealed a different secret")
			}
			if pin != "" {
				if _, err := Unseal(ctx, bus, parent, s, PINAuthValue([]byte(pin+"x"), nil)); !errors.Is(err, ErrBadPIN) {
					t.Fatalf("wrong authValue: got %v, want ErrBadPIN", err)
				}
				if bus.sawBytes(trimAuthValue(auth)) {
					t.Fatal("the authValue crossed the bus in the clear")
				}
			}
			if bus.sawBytes(secret[:]) {
				t.Fatal("the secret crossed the bus in the clear")
			}
		})
	}
}
