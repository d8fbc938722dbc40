package main

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// TestCLIKMIP drives enroll kmip, unlock, kms rewrap and a revocation against a real
// pykmip-server, and checks the images with cryptsetup.
func TestCLIKMIP(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	srv := kmiptest.Start(t)
	tlsFlags := []string{"--kmip-ca", srv.CA.CertFile, "--kmip-cert", srv.Client.CertFile, "--kmip-key", srv.Client.KeyFile}
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "correct horse kmip")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)

	r := mustCLI(t, "", nil, append(append([]string{"enroll", "kmip", "--key-file", key, "--kmip-server", srv.Addr}, tlsFlags...), img)...)
	m := regexp.MustCompile(`keyslot (\d+) \(token (\d+)\), wrap mode, KEK UID (\S+)`).FindStringSubmatch(r.stdout)
	if m == nil || !strings.Contains(r.stderr, "created KMIP object "+m[3]) {
		t.Fatalf("enroll kmip output:\n%s\n%s", r.stdout, r.stderr)
	}
	kek := m[3]
	dump := peer(t, nil, "cryptsetup", "luksDump", img)
	if !strings.Contains(dump, "diskcryptd-kmip") {
		t.Errorf("cryptsetup luksDump does not show the token:\n%s", dump)
	}

	outputs := []result{r}
	unlockArgs := append(append([]string{"unlock", "--test"}, tlsFlags...), img)
	r = mustCLI(t, "", nil, unlockArgs...)
	if !strings.Contains(r.stdout, "token 0 (diskcryptd-kmip, kmip)") {
		t.Errorf("unlock --test: %s", r.stdout)
	}
	outputs = append(outputs, r)
	// Canary: the keyslot secret (as the KMS releases it) is in no output of the
	// commands, which ran with --debug.
	admin0, err := newKMIPProtector(&env{log: hclog.NewNullLogger()}, srv.CA.CertFile, srv.Client.CertFile, srv.Client.KeyFile, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	tokJSON := mustCLI(t, "", nil, "token", "export", "--token-id", "0", img).stdout
	pass, err := admin0.Unseal(t.Context(), unlock.Token{ID: 0, Type: "diskcryptd-kmip", Keyslots: []int{1}, JSON: []byte(tokJSON), VolumeUUID: volumeUUID(t, img)})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(string(pass))
	for _, o := range outputs {
		for _, needle := range []string{string(pass), hex.EncodeToString(raw), string(raw)} {
			if strings.Contains(o.stdout+o.stderr, needle) {
				t.Errorf("a command's output carries the keyslot secret")
			}
		}
	}
	if strings.Contains(tokJSON, string(pass)) {
		t.Errorf("the token carries the keyslot secret")
	}
	if r := cli(t, "", nil, "unlock", "--test", img); r.code != exitPermission || !strings.Contains(r.stderr, "--kmip-ca") {
		t.Errorf("unlock without TLS flags: exit %d\n%s", r.code, r.stderr)
	}

	// The token copied to another volume (same keyslot number) does not open it.
	img2 := newImage(t, t.TempDir(), 40)
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img2)...)
	mustCLI(t, "", nil, append(append([]string{"keyslot", "add", "--key-file", key, "--new-key-file", key}, fastKDF...), img2)...)
	exported := mustCLI(t, "", nil, "token", "export", "--token-id", "0", img).stdout
	mustCLI(t, exported, nil, "token", "import", "--json-file", "-", img2)
	if r := cli(t, "", nil, append(append([]string{"unlock", "--test"}, tlsFlags...), img2)...); r.code != exitPermission || !strings.Contains(r.stderr, "KMIP Decrypt failed") {
		t.Errorf("copied token: exit %d\n%s", r.code, r.stderr)
	}

	// KEK rotation: a new KEK, rewrap, revoke the old one; the keyslot is untouched.
	admin, err := newKMIPProtector(&env{log: hclog.NewNullLogger()}, srv.CA.CertFile, srv.Client.CertFile, srv.Client.KeyFile, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	newKEK, err := admin.CreateKEK(t.Context(), []string{srv.Addr}, "rotated")
	if err != nil {
		t.Fatal(err)
	}
	before := keyslotJSON(t, img, "1")
	r = mustCLI(t, "", nil, append(append([]string{"kms", "rewrap", "--kmip-kek", newKEK}, tlsFlags...), img)...)
	if !strings.Contains(r.stdout, "from KEK "+kek+" to KEK "+newKEK) {
		t.Errorf("rewrap: %s", r.stdout)
	}
	if after := keyslotJSON(t, img, "1"); after != before {
		t.Errorf("rewrap changed the keyslot:\n%s\n%s", before, after)
	}
	if err := admin.Revoke(t.Context(), []string{srv.Addr}, kek, "rotated"); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "", nil, unlockArgs...)

	// Remote revocation: the volume stays locked, and the error says where and why.
	if err := admin.Revoke(t.Context(), []string{srv.Addr}, newKEK, "stolen"); err != nil {
		t.Fatal(err)
	}
	r = cli(t, "", nil, unlockArgs...)
	if r.code != exitPermission || !strings.Contains(r.stderr, srv.Addr) || !strings.Contains(r.stderr, "PermissionDenied") {
		t.Errorf("after revoke: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("after revoke: %s", r.stderr)
	// The passphrase keyslot still opens it (cryptsetup agrees).
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)

	// get mode, enrolled and unlocked.
	r = mustCLI(t, "", nil, append(append([]string{"enroll", "kmip", "--kmip-mode", "get", "--key-file", key, "--kmip-server", srv.Addr}, tlsFlags...), img2)...)
	if !strings.Contains(r.stdout, "get mode") {
		t.Errorf("enroll get: %s", r.stdout)
	}
	r = mustCLI(t, "", nil, append(append([]string{"unlock", "--test"}, tlsFlags...), img2)...)
	if !strings.Contains(r.stdout, "diskcryptd-kmip") {
		t.Errorf("unlock get mode: %s", r.stdout)
	}
	// --kmip-server replaces the token's servers (the KMS moved).
	dead := kmiptest.DeadAddr(t)
	mustCLI(t, "", nil, append(append([]string{"unlock", "--test", "--kmip-server", dead + "," + srv.Addr}, tlsFlags...), img2)...)
	r = cli(t, "", nil, append(append([]string{"unlock", "--test", "--token-timeout", "3s", "--kmip-server", dead}, tlsFlags...), img2)...)
	if r.code != exitPermission || !strings.Contains(r.stderr, "kmip server "+dead) || strings.Contains(r.stderr, "kmip server "+srv.Addr) {
		t.Errorf("--kmip-server override: exit %d\n%s", r.code, r.stderr)
	}
}

// keyslotJSON returns keyslot id's JSON object, as cryptsetup reads it.
func keyslotJSON(t *testing.T, img, id string) string {
	t.Helper()
	var meta struct {
		Keyslots map[string]json.RawMessage `json:"keyslots"`
	}
	out := peer(t, nil, "cryptsetup", "luksDump", "--dump-json-metadata", img)
	if err := json.Unmarshal([]byte(out), &meta); err != nil || meta.Keyslots[id] == nil {
		t.Fatalf("no keyslot %s in cryptsetup's metadata: %v\n%s", id, err, out)
	}
	return string(meta.Keyslots[id])
}

// TestCLIKMSCSR: kms csr makes the client key in one swtpm and a CSR; with the
// certificate the CA issues, enroll kmip and unlock work with --kmip-key tpm2:FILE on
// that TPM, and unlock fails on a second swtpm (the blob does not load there).
func TestCLIKMSCSR(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	a, b := tpmtest.StartSwtpm(t), tpmtest.StartSwtpm(t)
	srv := kmiptest.Start(t)
	dir := t.TempDir()
	csrFile := filepath.Join(dir, "host.csr")
	r := mustCLI(t, "", nil, "kms", "csr", "--tpm2-device", a, "--subject", "CN="+srv.Client.CN+",O=dc1", "--out", csrFile)
	blobFile := filepath.Join(dir, "host.tpm2key")
	if !strings.Contains(r.stdout, "tpm2:"+blobFile) {
		t.Fatalf("kms csr: %s", r.stdout)
	}
	if st, err := os.Stat(blobFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key blob: %v %v", st, err)
	}
	pemBytes, _ := os.ReadFile(csrFile)
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatalf("no PEM CSR in %s", csrFile)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil || csr.CheckSignature() != nil || csr.Subject.CommonName != srv.Client.CN {
		t.Fatalf("CSR: %v %+v", err, csr)
	}
	cert := srv.CA.IssuePublic(t, csr.Subject.CommonName, false, csr.PublicKey)
	tlsFlags := func(dev string) []string {
		return []string{"--kmip-ca", srv.CA.CertFile, "--kmip-cert", cert, "--kmip-key", "tpm2:" + blobFile, "--tpm2-device", dev}
	}
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "correct horse tpm key")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", nil, append(append([]string{"enroll", "kmip", "--key-file", key, "--kmip-server", srv.Addr}, tlsFlags(a)...), img)...)
	mustCLI(t, "", nil, append(append([]string{"unlock", "--test"}, tlsFlags(a)...), img)...)
	r = cli(t, "", nil, append(append([]string{"unlock", "--test"}, tlsFlags(b)...), img)...)
	if r.code != exitPermission || !strings.Contains(r.stderr, "does not load on this TPM") {
		t.Fatalf("unlock with the key blob on another TPM: exit %d\n%s", r.code, r.stderr)
	}
}

// TestCLIKMSDownFallsThrough: a volume with a KMIP token first and a TPM2 token second;
// with the KMS stopped, unlock fails over to the TPM within the token timeout, and the
// KMS's failure (server, why) is logged.
func TestCLIKMSDownFallsThrough(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	spec := tpmtest.StartSwtpm(t)
	srv := kmiptest.Start(t)
	tlsFlags := []string{"--kmip-ca", srv.CA.CertFile, "--kmip-cert", srv.Client.CertFile, "--kmip-key", srv.Client.KeyFile}
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", nil, append(append([]string{"enroll", "kmip", "--key-file", key, "--kmip-server", srv.Addr}, tlsFlags...), img)...)
	mustCLI(t, "", nil, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, img)
	srv.Stop()
	start := time.Now()
	r := mustCLI(t, "", nil, append(append([]string{"unlock", "--test", "--token-timeout", "4s", "--tpm2-device", spec}, tlsFlags...), img)...)
	took := time.Since(start)
	if !strings.Contains(r.stdout, "token 1 (systemd-tpm2, tpm2)") {
		t.Fatalf("unlock did not fall through to the TPM2 token: %s", r.stdout)
	}
	if !strings.Contains(r.stderr, "kmip server "+srv.Addr) || !strings.Contains(r.stderr, "connection refused") {
		t.Errorf("the KMS failure is not reported with server and cause:\n%s", r.stderr)
	}
	t.Logf("fell through to the TPM2 token in %s", took)
}

// volumeUUID returns the LUKS2 UUID cryptsetup reads from img.
func volumeUUID(t *testing.T, img string) string {
	t.Helper()
	return strings.TrimSpace(peer(t, nil, "cryptsetup", "luksUUID", img))
}
