package tpmtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
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
// means the TPM refused (tpm2-tools' output is logged). Tokens with a salted PIN or a
// signed policy are outside its reach (the test fails).
func UnsealWithTools(t testing.TB, spec string, tokJSON []byte, pin string) ([]byte, error) {
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
	}
	if err := json.Unmarshal(tokJSON, &tok); err != nil {
		t.Fatalf("token JSON: %v", err)
	}
	if tok.Salt != "" || tok.Pubkey != "" {
		t.Fatal("UnsealWithTools: salted PINs and signed policies are not supported")
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
	steps := [][]string{
		{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", alg,
			"-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt", "-c", f("primary.ctx")},
		{"tpm2_load", "-C", f("primary.ctx"), "-u", f("pub"), "-r", f("priv"), "-c", f("obj.ctx")},
		{"tpm2_flushcontext", "-t"}, // objects stay reachable through their context files
		{"tpm2_startauthsession", "--policy-session", "-c", f("primary.ctx"), "-S", f("session.ctx")},
	}
	if len(tok.PCRs) > 0 {
		list := make([]string, len(tok.PCRs))
		for i, p := range tok.PCRs {
			list[i] = strconv.Itoa(p)
		}
		steps = append(steps, []string{"tpm2_policypcr", "-S", f("session.ctx"), "-l", bank + ":" + strings.Join(list, ",")})
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
