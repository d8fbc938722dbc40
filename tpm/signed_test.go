package tpm

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

func requireSignedPeers(t *testing.T) {
	t.Helper()
	tpmtest.RequirePeer(t, "systemd-cryptenroll", tpmtest.SystemdMeasure)
}

// TestSignedPolicySystemdEnrollsWeUnseal: systemd-cryptenroll --tpm2-public-key
// seals a volume to PCR 11 values signed by a key (with and without PCRs bound to
// today's values, with and without a PIN); a signature systemd-measure made for the
// booted UKI unlocks it here, one for another UKI is refused with a reason, and no
// signature at all is its own error. Our enrolment of the same policy has the policy
// digest systemd wrote.
func TestSignedPolicySystemdEnrollsWeUnseal(t *testing.T) {
	requireSignedPeers(t)
	for _, tc := range []struct {
		name string
		pcrs string
		pin  string
	}{
		{"signed only", "", ""},
		{"signed and pcr 7", "7", ""},
		{"signed with inner-zero pin", "", "8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tpmtest.StartSwtpm(t)
			keys := t.TempDir()
			sb := tpmtest.BootSigned(t, spec, keys)
			pub, goodSig, otherSig := sb.PublicKey, sb.Signature, sb.OtherSignature

			img, key := image(t)
			tokJSON, slot := systemdEnroll(t, spec, img, key, tc.pin, "--tpm2-public-key="+pub,
				"--tpm2-public-key-pcrs=11", "--tpm2-pcrs="+tc.pcrs)
			tok := unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{slot}, JSON: tokJSON}
			pinFn := func(context.Context, string) ([]byte, error) { return []byte(tc.pin), nil }

			p, err := NewProtector(Config{Device: spec, Signature: goodSig, PIN: pinFn})
			if err != nil {
				t.Fatal(err)
			}
			pass, err := p.Unseal(testCtx(t), tok)
			if err != nil {
				t.Fatalf("unseal systemd's signed token with the booted UKI's signature: %v\n%s", err, tokJSON)
			}
			testPassphrase(t, img, slot, pass)

			wrong, _ := NewProtector(Config{Device: spec, Signature: otherSig, PIN: pinFn})
			_, err = wrong.Unseal(testCtx(t), tok)
			var mismatch *SignatureMismatchError
			if !errors.Is(err, ErrPCRSignatureMismatch) || !errors.As(err, &mismatch) || !strings.Contains(err.Error(), "other PCR values") {
				t.Fatalf("signature for another UKI: got %v, want a SignatureMismatchError for other PCR values", err)
			}
			// A signature file claiming the right policy with a forged signature: the
			// TPM itself refuses it.
			forged := filepath.Join(keys, "forged.json")
			if err := os.WriteFile(forged, forgeSignature(t, goodSig), 0o600); err != nil {
				t.Fatal(err)
			}
			fp, _ := NewProtector(Config{Device: spec, Signature: forged, PIN: pinFn})
			if _, err := fp.Unseal(testCtx(t), tok); !errors.Is(err, ErrPCRSignatureMismatch) || !strings.Contains(err.Error(), "TPM rejected the signature") {
				t.Fatalf("forged signature: got %v", err)
			}
			none, _ := NewProtector(Config{Device: spec, Signature: filepath.Join(keys, "missing.json"), PIN: pinFn})
			if _, err := none.Unseal(testCtx(t), tok); !errors.Is(err, ErrNoPCRSignature) || !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("missing signature file: got %v", err)
			}

			// Our enrolment of the same policy writes the digest systemd wrote.
			pubPEM, err := os.ReadFile(pub)
			if err != nil {
				t.Fatal(err)
			}
			pcrs, _, err := ParsePCRs(tc.pcrs)
			if err != nil {
				t.Fatal(err)
			}
			if pcrs == nil {
				pcrs = []int{}
			}
			ours, err := NewProtector(Config{Device: spec, PCRs: pcrs, PublicKey: pubPEM, PublicKeyPCRs: []int{11},
				EnrollWithPIN: tc.pin != "", PIN: pinFn, Signature: goodSig})
			if err != nil {
				t.Fatal(err)
			}
			e, err := ours.Enroll(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			var sd map[string]any
			if err := json.Unmarshal(tokJSON, &sd); err != nil {
				t.Fatal(err)
			}
			if e.Token["tpm2-policy-hash"] != sd["tpm2-policy-hash"] {
				t.Fatalf("our policy digest %v, systemd's %v", e.Token["tpm2-policy-hash"], sd["tpm2-policy-hash"])
			}
		})
	}
}

// forgeSignature returns the signature file at path with every signature's first
// byte changed.
func forgeSignature(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sigs, err := ParsePCRSignatures(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, entries := range sigs {
		for i := range entries {
			raw, err := base64.StdEncoding.DecodeString(entries[i].Sig)
			if err != nil {
				t.Fatal(err)
			}
			raw[0] ^= 0x80
			entries[i].Sig = base64.StdEncoding.EncodeToString(raw)
		}
	}
	out, err := json.Marshal(sigs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSignedPolicyWeEnrollOthersUnseal: a volume we enrol with a signed policy is
// unsealed independently with tpm2-tools (PolicyAuthorize with the ticket of the
// signature systemd-measure made), and the passphrase systemd derives opens the
// keyslot; systemd-cryptsetup gets as far as device-mapper with the signature and
// fails at the TPM with the other UKI's. After a kernel update (reboot into another
// UKI) only a new signature is needed: no re-enrolment.
func TestSignedPolicyWeEnrollOthersUnseal(t *testing.T) {
	requireSignedPeers(t)
	sdc := tpmtest.SystemdCryptsetup(t)
	for _, tc := range []struct {
		name string
		pcrs []int
		pin  string
	}{
		{"signed only", []int{}, ""},
		{"signed and pcr 7 with pin", []int{7}, "19"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sw := tpmtest.NewSwtpm(t)
			keys := t.TempDir()
			priv, pub := tpmtest.SigningKey(t, keys)
			pubPEM, err := os.ReadFile(pub)
			if err != nil {
				t.Fatal(err)
			}
			v1, v2 := tpmtest.NewUKI(t, "6.1.0-v1"), tpmtest.NewUKI(t, "6.1.0-v2")
			v1.Boot(t, sw.Spec)
			sig1 := v1.Sign(t, sw.Spec, priv, pub)
			sig1JSON, err := os.ReadFile(sig1)
			if err != nil {
				t.Fatal(err)
			}

			img, key := image(t)
			pinFn := func(context.Context, string) ([]byte, error) { return []byte(tc.pin), nil }
			p, tokJSON := enrollImported(t, Config{Device: sw.Spec, PCRs: tc.pcrs, PublicKey: pubPEM,
				EnrollWithPIN: tc.pin != "", PIN: pinFn, Signature: sig1}, img, key)

			// Independent unseal with tpm2-tools; the keyslot takes systemd's passphrase.
			pass, err := tpmtest.UnsealSignedWithTools(t, sw.Spec, tokJSON, tc.pin, sig1JSON)
			if err != nil {
				t.Fatalf("tpm2-tools could not unseal our signed token: %v", err)
			}
			tpmtest.ProveKeyslot(t, img, 1, pass)

			// systemd-cryptsetup with the signature: unsealed, then stopped by the
			// missing device-mapper; with another UKI's signature: a TPM2 failure.
			sig2 := v2.Sign(t, sw.Spec, priv, pub)
			var env []string
			if tc.pin != "" {
				env = []string{"PIN=" + tc.pin}
			}
			out, _ := runErr(env, nil, sdc, "attach", "diskcryptd-signed", img, "-", "tpm2-device="+sw.Spec+",tpm2-signature="+sig1+",headless=true")
			t.Logf("systemd-cryptsetup (booted UKI's signature) said:\n%s", out)
			if !strings.Contains(out, "Failed to activate with TPM2 acquired key: Operation not supported") {
				t.Fatalf("systemd-cryptsetup did not unseal our signed token:\n%s", out)
			}
			out, _ = runErr(env, nil, sdc, "attach", "diskcryptd-signed", img, "-", "tpm2-device="+sw.Spec+",tpm2-signature="+sig2+",headless=true")
			t.Logf("systemd-cryptsetup (other UKI's signature) said:\n%s", out)
			if strings.Contains(out, "Failed to activate with TPM2 acquired key: Operation not supported") {
				t.Fatalf("systemd-cryptsetup unsealed with a signature for another UKI:\n%s", out)
			}

			// Kernel update: reboot into v2. v1's signature no longer applies, v2's
			// does, and the token is the same.
			sw.Reboot(t)
			v2.Boot(t, sw.Spec)
			tok := unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{1}, JSON: tokJSON}
			if _, err := p.Unseal(testCtx(t), tok); !errors.Is(err, ErrPCRSignatureMismatch) {
				t.Fatalf("after booting v2 with v1's signature: got %v, want ErrPCRSignatureMismatch", err)
			}
			p2, err := NewProtector(Config{Device: sw.Spec, PIN: pinFn, Signature: sig2})
			if err != nil {
				t.Fatal(err)
			}
			got, err := p2.Unseal(testCtx(t), tok)
			if err != nil {
				t.Fatalf("after booting v2 with v2's signature: %v", err)
			}
			if !tpmtest.KeyslotAccepts(t, img, 1, got) {
				t.Fatal("unsealed passphrase does not open keyslot 1 after the kernel update")
			}
		})
	}
}

// TestSignedPolicyName checks the TPM name of a PCR signing key against its public
// area written out byte by byte as systemd 252 loads it (type RSA, nameAlg SHA-256,
// decrypt|sign|userWithAuth, no policy, NULL symmetric and scheme, 2048 bits,
// exponent 65537 written out, the modulus). The end-to-end check is
// TestSignedPolicySystemdEnrollsWeUnseal, where our digest equals systemd's.
func TestSignedPolicyName(t *testing.T) {
	n := make([]byte, 256)
	for i := range n {
		n[i] = 1
	}
	n[0] = 0xc0
	sp := &SignedPolicy{Key: &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537}, PCRs: []int{11}}
	pub := []byte{0, 1, 0, 0x0b, 0, 6, 0, 0x40, 0, 0, 0, 0x10, 0, 0x10, 8, 0, 0, 1, 0, 1, 1, 0}
	pub = append(pub, n...)
	sum := sha256.Sum256(pub)
	if got, want := hex.EncodeToString(sp.Name().Buffer), "000b"+hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("name %s, want %s", got, want)
	}
}

func TestPCRSignaturesFind(t *testing.T) {
	pol := bytes.Repeat([]byte{0xab}, 32)
	sigs, err := ParsePCRSignatures([]byte(`{"sha256":[` +
		`{"pcrs":[11],"pkfp":"aa","pol":"` + hex.EncodeToString(pol) + `","sig":"AQID"},` +
		`{"pcrs":[11],"pkfp":"bb","pol":"` + strings.Repeat("cd", 32) + `","sig":"BAUG"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, bank, fp string
		pcrs           []int
		pol            []byte
		want           string // signature hex, or a piece of the reason
	}{
		{"match", "sha256", "AA", []int{11}, pol, "010203"},
		{"other values", "sha256", "bb", []int{11}, pol, "other PCR values"},
		{"other key", "sha256", "cc", []int{11}, pol, "another key"},
		{"other pcrs", "sha256", "aa", []int{7, 11}, pol, "no signature for these PCRs"},
		{"other bank", "sha1", "aa", []int{11}, pol, "no signature for this PCR bank"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := sigs.find(tc.bank, tc.pcrs, tc.fp, tc.pol)
			if err != nil {
				if !errors.Is(err, ErrPCRSignatureMismatch) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want %q", err, tc.want)
				}
				return
			}
			if hex.EncodeToString(sig) != tc.want {
				t.Fatalf("got signature %x, want %s", sig, tc.want)
			}
		})
	}
	for _, bad := range []string{`[]`, `{"sha256":[{"pol":"zz"}]}`, `{"sha256":[{"sig":"%%%"}]}`, `{"sha256":[{"pcrs":[99]}]}`} {
		if _, err := ParsePCRSignatures([]byte(bad)); err == nil {
			t.Errorf("%s: parsed", bad)
		}
	}
}

func FuzzParsePCRSignatures(f *testing.F) {
	f.Add([]byte(`{"sha256":[{"pcrs":[11],"pkfp":"9ee4","pol":"1583","sig":"I25D"}]}`))
	f.Add([]byte(`{"sha1":[],"sha256":[{"pcrs":[11,12]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sigs, err := ParsePCRSignatures(b)
		if err != nil {
			return
		}
		_, _ = sigs.find("sha256", []int{11}, "9ee4", []byte{0x15, 0x83})
	})
}

func FuzzNewSignedPolicy(f *testing.F) {
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sp, err := NewSignedPolicy(b, []int{11})
		if err != nil {
			return
		}
		_ = sp.Name()
		_ = sp.Fingerprint()
	})
}
