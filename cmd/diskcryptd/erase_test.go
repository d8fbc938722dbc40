package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
)

// TestEraseKMSRevoke: erase --kms-revoke destroys the keyslots and then revokes and
// destroys the volume's KEK in a real pykmip-server, saying so per server; a header
// backup restored afterwards no longer opens through the KMS (remote crypto-erase),
// only the passphrase it also holds. Without a KMIP token it refuses before erasing.
func TestEraseKMSRevoke(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	srv := kmiptest.Start(t)
	tlsFlags := []string{"--kmip-ca", srv.CA.CertFile, "--kmip-cert", srv.Client.CertFile, "--kmip-key", srv.Client.KeyFile}
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "erase me")
	logPath := filepath.Join(dir, "audit.jsonl")
	env := map[string]string{audit.EnvPath: logPath}
	mustCLI(t, "", env, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	if r := cli(t, "", env, append(append([]string{"erase", "--batch-mode", "--kms-revoke"}, tlsFlags...), img)...); r.code != exitUsage || !strings.Contains(r.stderr, "no KMIP token") {
		t.Fatalf("erase --kms-revoke without a KMIP token: %+v", r)
	}
	mustCLI(t, "", env, "unlock", "--test", "--key-file", key, img)
	r := mustCLI(t, "", env, append(append([]string{"enroll", "kmip", "--key-file", key, "--kmip-server", srv.Addr}, tlsFlags...), img)...)
	m := regexp.MustCompile(`KEK UID (\S+)`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("enroll kmip: %s", r.stdout)
	}
	kek := m[1]
	backup := filepath.Join(dir, "hdr.bak")
	mustCLI(t, "", env, "header", "backup", "--header-backup-file", backup, img)
	if r := cli(t, "", env, "erase", "--batch-mode", "--kms-revoke", img); r.code != exitUsage || !strings.Contains(r.stderr, "--kmip-ca") {
		t.Fatalf("erase --kms-revoke without TLS flags: %+v", r)
	}
	r = mustCLI(t, "", env, append(append([]string{"erase", "--batch-mode", "--kms-revoke"}, tlsFlags...), img)...)
	if !strings.Contains(r.stdout, "every keyslot destroyed") || !strings.Contains(r.stdout, "KMS "+srv.Addr+": KEK "+kek+" revoked and destroyed") {
		t.Fatalf("erase --kms-revoke: %s\n%s", r.stdout, r.stderr)
	}
	// The backup brings the header back, but the KMS route is gone for good.
	mustCLI(t, "", env, "header", "restore", "--header-backup-file", backup, img)
	if r := cli(t, "", env, append(append([]string{"unlock", "--test"}, tlsFlags...), img)...); r.code != exitPermission {
		t.Fatalf("KMS unlock after the KEK was destroyed: %+v", r)
	}
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
	// A second revoke finds nothing to destroy: it says so and fails.
	r = cli(t, "", env, append(append([]string{"erase", "--batch-mode", "--kms-revoke"}, tlsFlags...), img)...)
	if r.code == exitOK || !strings.Contains(r.stdout, "NOT destroyed") || !strings.Contains(r.stderr, "not revoked and destroyed on any server") {
		t.Fatalf("second erase --kms-revoke: %+v", r)
	}

	recs, err := audit.ReadFile(logPath, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var kmsRecs []audit.Record
	for _, r := range recs {
		if r.Kind == audit.KindErase && r.KEKUID != "" {
			kmsRecs = append(kmsRecs, r)
		}
	}
	if len(kmsRecs) != 2 || kmsRecs[0].Result != audit.Success || kmsRecs[0].KMSServer != srv.Addr || kmsRecs[0].KEKUID != kek || kmsRecs[1].Result != audit.Failure {
		t.Fatalf("KMS erase records: %+v", kmsRecs)
	}
}
