package tpm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

func openSwtpm(t *testing.T) (string, transport.TPMCloser) {
	t.Helper()
	spec := tpmtest.StartSwtpm(t)
	tp, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return spec, tp
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestSealUnseal(t *testing.T) {
	_, tp := openSwtpm(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		alg  PrimaryAlg
		pcrs []int
		bank tpm2.TPMIAlgHash
		pin  string
	}{
		{"ecc pcr7", PrimaryECC, []int{7}, tpm2.TPMAlgSHA256, ""},
		{"rsa pcr7+11", PrimaryRSA, []int{7, 11}, tpm2.TPMAlgSHA256, ""},
		{"ecc sha1 bank", PrimaryECC, []int{0, 7}, tpm2.TPMAlgSHA1, ""},
		{"ecc no pcrs pin", PrimaryECC, nil, tpm2.TPMAlgSHA256, "1234"},
		{"ecc pcr7 pin", PrimaryECC, []int{7}, tpm2.TPMAlgSHA256, "correct horse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, err := CreatePrimary(ctx, tp, tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			defer parent.Close(tp)
			secret := bytes.Repeat([]byte{0x5a}, SecretSize)
			var auth []byte
			if tc.pin != "" {
				auth = PINAuthValue([]byte(tc.pin), nil)
			}
			policy := Policy{PCRs: tc.pcrs, Bank: tc.bank, PIN: tc.pin != ""}
			s, err := Seal(ctx, tp, parent, secret, policy, auth)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Unseal(ctx, tp, parent, s, auth)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatalf("unsealed %x, want %x", got, secret)
			}
			// Round trip through the systemd blob.
			priv, pub, err := ParseBlob(s.Blob())
			if err != nil {
				t.Fatal(err)
			}
			s2 := &Sealed{Private: priv, Public: pub, Policy: policy}
			if got, err = Unseal(ctx, tp, parent, s2, auth); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("unseal from blob: %v", err)
			}
		})
	}
}

func TestPolicyMismatchAndPIN(t *testing.T) {
	_, tp := openSwtpm(t)
	ctx := testCtx(t)
	parent, err := CreatePrimary(ctx, tp, PrimaryAuto)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close(tp)
	if parent.Alg != PrimaryECC {
		t.Fatalf("auto primary is %s, want ecc", parent.Alg)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	auth := PINAuthValue([]byte("good pin"), nil)
	pinned, err := Seal(ctx, tp, parent, secret, Policy{PCRs: []int{7}, PIN: true}, auth)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := Seal(ctx, tp, parent, secret, Policy{PCRs: []int{7, 11}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	// Wrong PIN, then the right one.
	_, err = Unseal(ctx, tp, parent, pinned, PINAuthValue([]byte("bad pin"), nil))
	if !errors.Is(err, ErrBadPIN) {
		t.Fatalf("wrong PIN: got %v, want ErrBadPIN", err)
	}
	if got, err := Unseal(ctx, tp, parent, pinned, auth); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("right PIN: %v", err)
	}

	// A PCR outside the policies does not matter.
	if err := Extend(ctx, tp, 12, nil, []byte("unrelated")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Sealed{pinned, plain} {
		if _, err := Unseal(ctx, tp, parent, s, authFor(s, auth)); err != nil {
			t.Fatalf("after extending PCR 12: %v", err)
		}
	}
	// Extending PCR 11 breaks only the policy covering it.
	if err := Extend(ctx, tp, 11, nil, []byte("new kernel")); err != nil {
		t.Fatal(err)
	}
	if _, err := Unseal(ctx, tp, parent, plain, nil); !errors.Is(err, ErrPolicyMismatch) {
		t.Fatalf("after extending PCR 11: got %v, want ErrPolicyMismatch", err)
	} else if !strings.Contains(err.Error(), "diskcryptd reseal") {
		t.Fatalf("error does not say what to do: %v", err)
	}
	if _, err := Unseal(ctx, tp, parent, pinned, auth); err != nil {
		t.Fatalf("PCR 7 policy after extending PCR 11: %v", err)
	}
	if err := Extend(ctx, tp, 7, nil, []byte("new db")); err != nil {
		t.Fatal(err)
	}
	if _, err := Unseal(ctx, tp, parent, pinned, auth); !errors.Is(err, ErrPolicyMismatch) {
		t.Fatalf("after extending PCR 7: got %v, want ErrPolicyMismatch", err)
	}
}

func authFor(s *Sealed, auth []byte) []byte {
	if s.Policy.PIN {
		return auth
	}
	return nil
}

func TestLockout(t *testing.T) {
	_, tp := openSwtpm(t)
	ctx := testCtx(t)
	// One failure locks the TPM out (lockout auth is empty on a fresh swtpm).
	setMaxTries(t, tp, 1)
	parent, err := CreatePrimary(ctx, tp, PrimaryECC)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close(tp)
	auth := PINAuthValue([]byte("pin"), nil)
	s, err := Seal(ctx, tp, parent, make([]byte, 32), Policy{PCRs: []int{7}, PIN: true}, auth)
	if err != nil {
		t.Fatal(err)
	}
	var last error
	for range 3 {
		_, last = Unseal(ctx, tp, parent, s, PINAuthValue([]byte("nope"), nil))
		if errors.Is(last, ErrLockout) {
			break
		}
	}
	if !errors.Is(last, ErrLockout) {
		t.Fatalf("got %v, want ErrLockout", last)
	}
	if _, err := Unseal(ctx, tp, parent, s, auth); !errors.Is(err, ErrLockout) {
		t.Fatalf("right PIN in lockout: got %v, want ErrLockout", err)
	}
}

func TestContextChecked(t *testing.T) {
	_, tp := openSwtpm(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := CreatePrimary(ctx, tp, PrimaryECC); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestProtectorEnrollUnsealCanary(t *testing.T) {
	spec, tp := openSwtpm(t)
	tp.Close()
	ctx := testCtx(t)
	var logs bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Trace})
	const pin = "canary-PIN-9f8e7d"
	p, err := NewProtector(Config{
		Device: spec, PCRs: []int{7}, EnrollWithPIN: true, Logger: logger,
		PIN: func(context.Context, string) ([]byte, error) { return []byte(pin), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	e, err := p.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tokJSON := marshalToken(t, e.Token, 1)
	got, err := p.Unseal(ctx, unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{1}, JSON: tokJSON})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, e.Passphrase) {
		t.Fatal("unsealed passphrase differs from the enrolled one")
	}
	// Wrong PIN through the protector.
	bad, _ := NewProtector(Config{Device: spec, Logger: logger,
		PIN: func(context.Context, string) ([]byte, error) { return []byte("wrong"), nil }})
	if _, err := bad.Unseal(ctx, unlock.Token{Type: TypeSystemd, JSON: tokJSON}); !errors.Is(err, ErrBadPIN) {
		t.Fatalf("got %v, want ErrBadPIN", err)
	}
	// Other token types are not ours.
	if _, err := p.Unseal(ctx, unlock.Token{Type: "systemd-recovery", JSON: []byte(`{"type":"systemd-recovery"}`)}); !errors.Is(err, unlock.ErrNotMine) {
		t.Fatalf("got %v, want ErrNotMine", err)
	}
	if _, err := p.Unseal(ctx, unlock.Token{Type: TypeClevis, JSON: clevisTangToken(t)}); !errors.Is(err, unlock.ErrNotMine) {
		t.Fatalf("clevis tang: got %v, want ErrNotMine", err)
	}
	secret := decodeB64(t, e.Passphrase)
	for _, canary := range [][]byte{secret, e.Passphrase, []byte(pin)} {
		if bytes.Contains(logs.Bytes(), canary) {
			t.Fatalf("log output contains a secret: %s", logs.String())
		}
	}
	if logs.Len() == 0 {
		t.Fatal("expected some debug output")
	}
}

// setMaxTries runs TPM2_DictionaryAttackParameters (Part 3, 25.3) with the empty
// lockout password; go-tpm v0.9.8 has no struct for it.
func setMaxTries(t *testing.T, tp transport.TPM, n uint32) {
	t.Helper()
	cmd := binary.BigEndian.AppendUint16(nil, 0x8002)
	cmd = binary.BigEndian.AppendUint32(cmd, 39)
	cmd = binary.BigEndian.AppendUint32(cmd, 0x13A)
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHLockout))
	cmd = binary.BigEndian.AppendUint32(cmd, 9)
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRSPW))
	cmd = append(cmd, 0, 0, 0, 0, 0)
	cmd = binary.BigEndian.AppendUint32(cmd, n)
	cmd = binary.BigEndian.AppendUint32(cmd, 1000)
	cmd = binary.BigEndian.AppendUint32(cmd, 1000)
	rsp, err := tp.Send(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:]); rc != 0 {
		t.Fatalf("DictionaryAttackParameters: %v", tpm2.TPMRC(rc))
	}
}
