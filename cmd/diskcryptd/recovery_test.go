package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

// TestRecoveryReplace: enroll recovery --replace prints a new recovery key that
// cryptsetup accepts; the old one opens nothing; one systemd-recovery token remains;
// the other keyslots are untouched; the change is one audit record.
func TestRecoveryReplace(t *testing.T) {
	tpmtest.RequirePeer(t, "cryptsetup")
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "provisioning")
	logPath := filepath.Join(dir, "audit.jsonl")
	env := map[string]string{audit.EnvPath: logPath}
	mustCLI(t, "", env, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	if r := cli(t, "", env, "enroll", "recovery", "--replace", "--key-file", key, img); r.code != exitUsage || !strings.Contains(r.stderr, "no recovery key") {
		t.Fatalf("replace without a recovery key: %+v", r)
	}
	old := strings.TrimSpace(mustCLI(t, "", env, "enroll", "recovery", "--key-file", key, img).stdout)
	// The old recovery key itself authorizes its replacement.
	r := mustCLI(t, old, env, "enroll", "recovery", "--replace", "--key-file", "-", img)
	fresh := strings.TrimSpace(r.stdout)
	if fresh == old || len(fresh) != 71 || !strings.Contains(r.stderr, "replaced keyslots [1]") {
		t.Fatalf("replace: %+v", r)
	}
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", writeSecret(t, dir, "fresh", fresh), img)
	if r := cli(t, old, env, "unlock", "--test", "--key-file", "-", img); r.code != exitPermission {
		t.Fatalf("old recovery key still opens: %+v", r)
	}
	mustCLI(t, "", env, "unlock", "--test", "--key-file", key, img)
	var toks []struct {
		ID       int
		Type     string
		Keyslots []int
	}
	json.Unmarshal([]byte(mustCLI(t, "", env, "token", "list", "--json", img).stdout), &toks)
	if len(toks) != 1 || toks[0].Type != "systemd-recovery" || toks[0].ID != 1 || len(toks[0].Keyslots) != 1 || toks[0].Keyslots[0] != 2 {
		t.Fatalf("tokens after replace: %+v", toks)
	}
	// Rotation: drop the provisioning passphrase, keep the recovery key.
	mustCLI(t, "", env, "keyslot", "remove", "--slot", "0", img)
	mustCLI(t, fresh, env, "unlock", "--test", "--key-file", "-", img)

	recs, err := audit.ReadFile(logPath, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var got []audit.Record
	for _, r := range recs {
		if r.Kind == audit.KindRecoveryReplace {
			got = append(got, r)
		}
	}
	if len(got) != 1 || got[0].Result != audit.Success || !strings.Contains(got[0].Detail, "keyslots [1]") {
		t.Fatalf("audit: %+v", got)
	}
	raw, _ := os.ReadFile(logPath)
	if strings.Contains(string(raw), fresh) || strings.Contains(string(raw), old) {
		t.Fatal("a recovery key reached the audit log")
	}
}
