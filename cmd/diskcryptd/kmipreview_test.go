package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

// TestCLIKMIPClientKeyMode: a --kmip-key file that group or others may read is
// refused like a --key-file, before anything else happens, unless
// --allow-insecure-key-file.
func TestCLIKMIPClientKeyMode(t *testing.T) {
	dir := t.TempDir()
	ca := kmiptest.NewCA(t, dir, "kms")
	id := ca.Issue(t, "host", false)
	if err := os.Chmod(id.KeyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	key := writeSecret(t, dir, "key", "correct horse")
	img := filepath.Join(dir, "missing.img")
	args := []string{"enroll", "kmip", "--key-file", key, "--kmip-server", "127.0.0.1:1",
		"--kmip-ca", ca.CertFile, "--kmip-cert", id.CertFile, "--kmip-key", id.KeyFile, img}
	r := cli(t, "", nil, args...)
	t.Logf("exit %d: %s", r.code, r.stderr)
	if r.code != exitUsage || !strings.Contains(r.stderr, "chmod 600 "+id.KeyFile) {
		t.Errorf("a world-readable client key was not refused: exit %d\n%s", r.code, r.stderr)
	}
	// Overridden, it gets past the check (and fails at the missing image).
	r = cli(t, "", nil, append([]string{"--allow-insecure-key-file"}, args...)...)
	if strings.Contains(r.stderr, "chmod 600 "+id.KeyFile) {
		t.Errorf("--allow-insecure-key-file did not override: %s", r.stderr)
	}
}

// TestCLIKMSCSRKeepsExistingBlob: kms csr never overwrites an existing key blob (it
// may be the key the host's certificate is for) nor leaves a blob readable by others.
func TestCLIKMSCSRKeepsExistingBlob(t *testing.T) {
	a := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	blob := filepath.Join(dir, "host.tpm2key")
	if err := os.WriteFile(blob, []byte("the old key"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "", nil, "kms", "csr", "--tpm2-device", a, "--subject", "CN=host", "--out", filepath.Join(dir, "host.csr"))
	t.Logf("exit %d: %s%s", r.code, r.stdout, r.stderr)
	got, _ := os.ReadFile(blob)
	st, _ := os.Stat(blob)
	if r.code == 0 || string(got) != "the old key" {
		t.Errorf("kms csr overwrote an existing key blob (exit %d, mode %v)", r.code, st.Mode().Perm())
	}
	// A fresh one is created 0600.
	out := filepath.Join(dir, "new.csr")
	mustCLI(t, "", nil, "kms", "csr", "--tpm2-device", a, "--subject", "CN=host", "--out", out)
	if st, err := os.Stat(filepath.Join(dir, "new.tpm2key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("new key blob: %v %v", st, err)
	}
}
