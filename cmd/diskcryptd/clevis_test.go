package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/internal/testimg"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

// clevisPassOpens checks that clevis recovers slot's passphrase of img and that
// cryptsetup accepts it through standard input.
func clevisPassOpens(t *testing.T, img string, slot int) {
	t.Helper()
	testpeer.Require(t, "clevis", "cryptsetup")
	pass, err := exec.Command("clevis", "luks", "pass", "-d", img, "-s", fmt.Sprint(slot)).Output()
	if err != nil || len(pass) == 0 {
		t.Fatalf("clevis luks pass -s %d: %v", slot, err)
	}
	cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-slot", fmt.Sprint(slot), img)
	cmd.Stdin = strings.NewReader(string(pass))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup refused clevis's passphrase for slot %d: %v: %s", slot, err, out)
	}
}

func newClevisImage(t *testing.T, key string) string {
	t.Helper()
	img := testimg.Sparse(t, 20<<20)
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	return img
}

// TestCLIClevis: enroll clevis (trust pinned, trust on first use, refused without
// either), token list's pin trees, unlock --test of several devices, a dead server's
// token skipped for the next, and token regen after tangd-rotate-keys.
func TestCLIClevis(t *testing.T) {
	testpeer.Require(t, "cryptsetup", "clevis")
	a, b, c := tangtest.Start(t), tangtest.Start(t), tangtest.Start(t)
	key := writeSecret(t, t.TempDir(), "key", "correct horse")
	thpA := a.SigningThumbprints()[0]

	img1 := newClevisImage(t, key)
	r := cli(t, "", nil, "enroll", "clevis", "--key-file", key, "--pin", "tang", "--config", fmt.Sprintf(`{"url":%q}`, a.URL), img1)
	if r.code == 0 || !strings.Contains(r.stderr, "--trust-first-use") {
		t.Fatalf("enroll without a thumbprint: exit %d, stderr %s; want a refusal naming --trust-first-use", r.code, r.stderr)
	}
	r = mustCLI(t, "", nil, "enroll", "clevis", "--key-file", key, "--pin", "tang", "--tang-thumbprint", thpA, "--config", fmt.Sprintf(`{"url":%q}`, a.URL), img1)
	if !strings.Contains(r.stdout, "keyslot 1") {
		t.Fatalf("enroll: %s", r.stdout)
	}
	clevisPassOpens(t, img1, 1)
	logs := []string{r.stdout + r.stderr}

	img2 := newClevisImage(t, key)
	r = mustCLI(t, "", nil, "enroll", "clevis", "--key-file", key, "--pin", "tang", "--trust-first-use", "--config", fmt.Sprintf(`{"url":%q}`, c.URL), img2)
	if !strings.Contains(r.stderr, "on first use: signing key "+c.SigningThumbprints()[0]) {
		t.Fatalf("trust on first use was not reported: %s", r.stderr)
	}
	peer(t, nil, "clevis", "luks", "bind", "-y", "-k", key, "-d", img2, "sss",
		fmt.Sprintf(`{"t":2,"pins":{"tang":[{"url":%q},{"url":%q}]}}`, a.URL, b.URL))
	list := mustCLI(t, "", nil, "token", "list", img2).stdout
	if want := fmt.Sprintf("sss t=2: tang(%s), tang(%s)", a.URL, b.URL); !strings.Contains(list, want) || !strings.Contains(list, "tang("+c.URL+")") {
		t.Fatalf("token list lacks %q:\n%s", want, list)
	}

	// Token 0 of img2 is bound to c: with c down, unlock goes on to token 1.
	c.Stop()
	r = mustCLI(t, "", nil, "unlock", "--test", "--tang-attempts", "2", img1, img2)
	if !strings.Contains(r.stdout, img1+": volume key recovered through token 0 (clevis, clevis)") ||
		!strings.Contains(r.stdout, img2+": volume key recovered through token 1 (clevis, clevis)") {
		t.Fatalf("unlock --test of two devices:\n%s", r.stdout)
	}
	t.Logf("unlock --test of two devices:\n%s", r.stdout)
	logs = append(logs, r.stdout+r.stderr)
	if !strings.Contains(r.stderr, c.URL) || !strings.Contains(r.stderr, "connection refused") {
		t.Fatalf("the dead server's failure is not reported with its URL and reason:\n%s", r.stderr)
	}

	// Rotation: regen follows the chain from the trusted key.
	a.Rotate()
	r = mustCLI(t, "", nil, "token", "regen", img1)
	if !strings.Contains(r.stdout, "re-bound") || !strings.Contains(r.stderr, "already trusted "+thpA) {
		t.Fatalf("regen after rotation:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}
	clevisPassOpens(t, img1, 1)
	mustCLI(t, "", nil, "unlock", "--test", img1)

	// Rotated again, and the signing key the token trusts is gone (its exchange key
	// stays, so the token still decrypts): the new advertisement is signed by a key
	// the token never saw, and is refused unless pinned.
	trusted := a.SigningThumbprints()[0]
	a.Rotate()
	if err := os.Remove(filepath.Join(a.Dir, "."+trusted+".jwk")); err != nil {
		t.Fatal(err)
	}
	r = cli(t, "", nil, "token", "regen", img1)
	t.Logf("regen against an unknown key: exit %d: %s", r.code, r.stderr)
	if r.code == 0 || !strings.Contains(r.stderr, "not signed by a trusted key") {
		t.Fatalf("regen against unknown keys: exit %d\n%s", r.code, r.stderr)
	}
	r = mustCLI(t, "", nil, "token", "regen", "--tang-thumbprint", a.SigningThumbprints()[0], img1)
	clevisPassOpens(t, img1, 1)

	// Canary: the keyslot passphrase (unchanged by regen) is in no output, at debug level.
	logs = append(logs, r.stdout+r.stderr)
	pass, err := exec.Command("clevis", "luks", "pass", "-d", img1, "-s", "1").Output()
	if err != nil || len(pass) < 32 {
		t.Fatalf("clevis luks pass: %v", err)
	}
	r = mustCLI(t, "", nil, "unlock", "--test", img1)
	logs = append(logs, r.stdout+r.stderr)
	for i, l := range logs {
		if strings.Contains(l, string(pass)) {
			t.Fatalf("output %d carries the keyslot passphrase", i)
		}
	}
}

// TestCLIClevisTPM2AndTang: enroll clevis sss(tpm2 AND tang) against swtpm, unlock
// --test through both, and clevis opens it too; without the TPM it stays locked.
func TestCLIClevisTPM2AndTang(t *testing.T) {
	testpeer.Require(t, "cryptsetup", "clevis", "tpm2_flushcontext")
	srv := tangtest.Start(t)
	dev := tpmtest.StartSwtpm(t)
	key := writeSecret(t, t.TempDir(), "key", "correct horse")
	img := newClevisImage(t, key)
	cfg := fmt.Sprintf(`{"t":2,"pins":{"tpm2":{"pcr_ids":"7"},"tang":[{"url":%q,"thp":%q}]}}`, srv.URL, srv.SigningThumbprints()[0])
	mustCLI(t, "", nil, "enroll", "clevis", "--key-file", key, "--pin", "sss", "--tpm2-device", dev, "--config", cfg, img)
	list := mustCLI(t, "", nil, "token", "list", img).stdout
	if want := "sss t=2: tpm2(pcr 7), tang(" + srv.URL + ")"; !strings.Contains(list, want) {
		t.Fatalf("token list lacks %q:\n%s", want, list)
	}
	auditLog := filepath.Join(t.TempDir(), "audit.jsonl")
	r := mustCLI(t, "", map[string]string{"DISKCRYPTD_AUDIT_LOG": auditLog}, "unlock", "--test", "--tpm2-device", dev, img)
	if !strings.Contains(r.stdout, "token 0 (clevis, clevis)") {
		t.Fatalf("unlock --test: %s", r.stdout)
	}
	if b, err := os.ReadFile(auditLog); err != nil || !strings.Contains(string(b), `"detail":"clevis sss t=2: tpm2(pcr 7), tang(`+srv.URL+`)"`) {
		t.Fatalf("the audit record does not name the pin tree: %v\n%s", err, b)
	}
	tcti := "TPM2TOOLS_TCTI=swtpm:path=" + strings.TrimPrefix(dev, "swtpm:path=")
	cmd := exec.Command("clevis", "luks", "pass", "-d", img, "-s", "1")
	cmd.Env = append(os.Environ(), tcti)
	pass, err := cmd.Output()
	if err != nil || len(pass) == 0 {
		t.Fatalf("clevis luks pass: %v", err)
	}
	peer(t, []string{tcti}, "tpm2_flushcontext", "--loaded-session")
	open := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-slot", "1", img)
	open.Stdin = strings.NewReader(string(pass))
	if out, err := open.CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup refused clevis's passphrase: %v: %s", err, out)
	}
	r = cli(t, "", nil, "unlock", "--test", "--tpm2-device", "swtpm:path="+filepath.Join(t.TempDir(), "none"), img)
	if r.code != exitPermission || !strings.Contains(r.stderr, "tpm2(pcr 7)") {
		t.Fatalf("without the TPM: exit %d: %s", r.code, r.stderr)
	}
}
