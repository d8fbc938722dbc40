package tpmtest

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// UnsealWithTools unseals a "systemd-tpm2" token with tpm2-tools alone, as an
// implementation independent of diskcryptd would, and returns the keyslot passphrase
// systemd derives from the secret: base64(secret). It creates systemd's storage
// primary key (ECC P-256 or RSA-2048, AES-128-CFB, restricted decrypt), loads the
// token's blob under it, satisfies PolicyPCR (and PolicyAuthValue with SHA-256 of
// pin) in a policy session salted with the primary key, and runs tpm2_unseal. An error
// means the TPM refused (tpm2-tools' output is logged). Tokens with a salted PIN are
// outside its reach (the test fails); for signed policies see UnsealSignedWithTools.
func UnsealWithTools(t testing.TB, spec string, tokJSON []byte, pin string) ([]byte, error) {
	t.Helper()
	return unsealWithTools(t, spec, tokJSON, pin, nil)
}

// UnsealSignedWithTools is UnsealWithTools for a token with a signed PCR policy
// (tpm2_pubkey): before PolicyPCR and PolicyAuthValue it loads the public key with
// tpm2_loadexternal (systemd's public area, written out here byte by byte), runs
// tpm2_policypcr over the signed PCRs, picks the signature of that digest from
// sigJSON (systemd-measure's format), and satisfies tpm2_policyauthorize with the
// ticket of tpm2_verifysignature.
func UnsealSignedWithTools(t testing.TB, spec string, tokJSON []byte, pin string, sigJSON []byte) ([]byte, error) {
	t.Helper()
	RequirePeer(t, "tpm2_loadexternal", "tpm2_verifysignature", "tpm2_policyauthorize")
	return unsealWithTools(t, spec, tokJSON, pin, sigJSON)
}

func unsealWithTools(t testing.TB, spec string, tokJSON []byte, pin string, sigJSON []byte) ([]byte, error) {
	t.Helper()
	RequirePeer(t, "tpm2_createprimary", "tpm2_load", "tpm2_startauthsession", "tpm2_policypcr",
		"tpm2_policyauthvalue", "tpm2_unseal", "tpm2_flushcontext")
	var tok struct {
		Blob       string `json:"tpm2-blob"`
		PCRs       []int  `json:"tpm2-pcrs"`
		Bank       string `json:"tpm2-pcr-bank"`
		PrimaryAlg string `json:"tpm2-primary-alg"`
		PIN        bool   `json:"tpm2-pin"`
		Salt       string `json:"tpm2_salt"`
		Pubkey     string `json:"tpm2_pubkey"`
		PubkeyPCRs []int  `json:"tpm2_pubkey_pcrs"`
	}
	if err := json.Unmarshal(tokJSON, &tok); err != nil {
		t.Fatalf("token JSON: %v", err)
	}
	if tok.Salt != "" {
		t.Fatal("UnsealWithTools: salted PINs are not supported")
	}
	if (tok.Pubkey != "") != (sigJSON != nil) {
		t.Fatal("UnsealWithTools: a signed policy needs signatures, and only it")
	}
	blob, err := base64.StdEncoding.DecodeString(tok.Blob)
	if err != nil || len(blob) < 4 {
		t.Fatalf("tpm2-blob: %v", err)
	}
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	// tpm2-blob is TPM2B_PRIVATE || TPM2B_PUBLIC, each led by its 16-bit size.
	n := 2 + (int(blob[0])<<8 | int(blob[1]))
	if n > len(blob) {
		t.Fatal("tpm2-blob is truncated")
	}
	for name, b := range map[string][]byte{"priv": blob[:n], "pub": blob[n:]} {
		if err := os.WriteFile(f(name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tool := func(args ...string) error {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+spec)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return err
	}
	// A raw TPM keeps what earlier clients left: start clean, and leave clean.
	flush := func() {
		for _, what := range []string{"-t", "-l"} {
			cmd := exec.Command("tpm2_flushcontext", what)
			cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+spec)
			_ = cmd.Run()
		}
	}
	flush()
	defer flush()
	alg := "ecc256:null:aes128cfb"
	if tok.PrimaryAlg == "rsa" {
		alg = "rsa2048:null:aes128cfb"
	}
	bank := tok.Bank
	if bank == "" {
		bank = "sha256"
	}
	pcrList := func(pcrs []int) string {
		list := make([]string, len(pcrs))
		for i, p := range pcrs {
			list[i] = strconv.Itoa(p)
		}
		return bank + ":" + strings.Join(list, ",")
	}
	steps := [][]string{
		{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", alg,
			"-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt", "-c", f("primary.ctx")},
		{"tpm2_load", "-C", f("primary.ctx"), "-u", f("pub"), "-r", f("priv"), "-c", f("obj.ctx")},
		{"tpm2_flushcontext", "-t"}, // objects stay reachable through their context files
		{"tpm2_startauthsession", "--policy-session", "-c", f("primary.ctx"), "-S", f("session.ctx")},
		{"tpm2_flushcontext", "-t"},
	}
	for _, step := range steps {
		if err := tool(step...); err != nil {
			return nil, err
		}
	}
	steps = nil
	if tok.Pubkey != "" {
		pemBytes, err := base64.StdEncoding.DecodeString(tok.Pubkey)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f("key.pub"), systemdKeyPublic(t, pemBytes), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := tool("tpm2_loadexternal", "-C", "o", "-u", f("key.pub"), "-c", f("key.ctx"), "-n", f("key.name")); err != nil {
			return nil, err
		}
		if err := tool("tpm2_flushcontext", "-t"); err != nil {
			return nil, err
		}
		if err := tool("tpm2_policypcr", "-S", f("session.ctx"), "-l", pcrList(tok.PubkeyPCRs), "-L", f("approved")); err != nil {
			return nil, err
		}
		approved, err := os.ReadFile(f("approved"))
		if err != nil {
			t.Fatal(err)
		}
		sig := pickSignature(t, sigJSON, bank, approved)
		if sig == nil {
			return nil, errors.New("no signature in the file for the current PCR values")
		}
		if err := os.WriteFile(f("sig"), sig, 0o600); err != nil {
			t.Fatal(err)
		}
		steps = append(steps,
			[]string{"tpm2_verifysignature", "-c", f("key.ctx"), "-g", "sha256", "-m", f("approved"),
				"-s", f("sig"), "-f", "rsassa", "-t", f("ticket")},
			[]string{"tpm2_flushcontext", "-t"},
			[]string{"tpm2_policyauthorize", "-S", f("session.ctx"), "-i", f("approved"), "-n", f("key.name"), "-t", f("ticket")})
	}
	if len(tok.PCRs) > 0 {
		steps = append(steps, []string{"tpm2_policypcr", "-S", f("session.ctx"), "-l", pcrList(tok.PCRs)})
	}
	auth := "session:" + f("session.ctx")
	if tok.PIN {
		steps = append(steps, []string{"tpm2_policyauthvalue", "-S", f("session.ctx")})
		// systemd's authValue is SHA-256 of the PIN text. tpm2-tools 5.4 takes a
		// session's password only inline ("+file:PATH" after a session is not
		// parsed, "+file:-" is read as text), so this test PIN's authValue goes
		// on the test tool's command line, against a throwaway swtpm.
		sum := sha256.Sum256([]byte(pin))
		auth += "+hex:" + hex.EncodeToString(sum[:])
	}
	steps = append(steps, []string{"tpm2_unseal", "-c", f("obj.ctx"), "-p", auth, "-o", f("secret")})
	for _, step := range steps {
		if err := tool(step...); err != nil {
			return nil, err
		}
	}
	secret, err := os.ReadFile(f("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) == 0 {
		return nil, errors.New("tpm2_unseal returned nothing")
	}
	pass := make([]byte, base64.StdEncoding.EncodedLen(len(secret)))
	base64.StdEncoding.Encode(pass, secret)
	return pass, nil
}

// KeyslotAccepts reports whether pass opens keyslot slot of the LUKS2 image img
// (cryptsetup open --test-passphrase, the passphrase on stdin).
func KeyslotAccepts(t testing.TB, img string, slot int, pass []byte) bool {
	t.Helper()
	RequirePeer(t, "cryptsetup")
	cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-slot", strconv.Itoa(slot), "--key-file", "-", img)
	cmd.Stdin = bytes.NewReader(pass)
	return cmd.Run() == nil
}

// systemdKeyPublic writes the TPM2B_PUBLIC systemd 252 loads for a PCR signing key:
// TPMT_PUBLIC{type RSA, nameAlg SHA-256, attributes decrypt|sign|userWithAuth, empty
// authPolicy, symmetric and scheme NULL, keyBits, exponent, unique = modulus}
// (TPM 2.0 Library, Part 2, 12.2.4).
func systemdKeyPublic(t testing.TB, pemBytes []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("tpm2_pubkey is not PEM")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		t.Fatalf("tpm2_pubkey is %T", k)
	}
	n := rk.N.Bytes()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x0001)     // TPM_ALG_RSA
	b = binary.BigEndian.AppendUint16(b, 0x000b)     // TPM_ALG_SHA256
	b = binary.BigEndian.AppendUint32(b, 0x00060040) // decrypt|sign|userWithAuth
	b = binary.BigEndian.AppendUint16(b, 0)          // authPolicy
	b = binary.BigEndian.AppendUint16(b, 0x0010)     // symmetric: TPM_ALG_NULL
	b = binary.BigEndian.AppendUint16(b, 0x0010)     // scheme: TPM_ALG_NULL
	b = binary.BigEndian.AppendUint16(b, uint16(len(n)*8))
	b = binary.BigEndian.AppendUint32(b, uint32(rk.E))
	b = binary.BigEndian.AppendUint16(b, uint16(len(n)))
	b = append(b, n...)
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
}

// pickSignature returns the signature in sigJSON (systemd-measure's format) of
// policy digest pol for bank, or nil.
func pickSignature(t testing.TB, sigJSON []byte, bank string, pol []byte) []byte {
	t.Helper()
	var sigs map[string][]struct {
		Pol string `json:"pol"`
		Sig string `json:"sig"`
	}
	if err := json.Unmarshal(sigJSON, &sigs); err != nil {
		t.Fatalf("signature JSON: %v", err)
	}
	for _, e := range sigs[bank] {
		if strings.EqualFold(e.Pol, hex.EncodeToString(pol)) {
			sig, err := base64.StdEncoding.DecodeString(e.Sig)
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}
	}
	return nil
}

// ProveKeyslot fails the test unless pass opens keyslot slot of img and the same
// passphrase with one bit changed does not: the check can fail.
func ProveKeyslot(t testing.TB, img string, slot int, pass []byte) {
	t.Helper()
	if !KeyslotAccepts(t, img, slot, pass) {
		t.Fatalf("the passphrase does not open keyslot %d", slot)
	}
	wrong := bytes.Clone(pass)
	wrong[len(wrong)/2] ^= 1
	if KeyslotAccepts(t, img, slot, wrong) {
		t.Fatalf("keyslot %d accepted a wrong passphrase: the check cannot fail", slot)
	}
}

// SystemdCryptsetup returns the path of systemd-cryptsetup (Debian keeps it in
// /lib/systemd), or skips/fails the test as RequirePeer does.
func SystemdCryptsetup(t testing.TB) string {
	t.Helper()
	const debian = "/lib/systemd/systemd-cryptsetup"
	if _, err := os.Stat(debian); err == nil {
		return debian
	}
	RequirePeer(t, "systemd-cryptsetup")
	return "systemd-cryptsetup"
}
