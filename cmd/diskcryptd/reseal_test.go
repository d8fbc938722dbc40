package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

type tokenRow struct {
	ID       int    `json:"id"`
	Type     string `json:"type"`
	Keyslots []int  `json:"keyslots"`
}

func tpmTokens(t *testing.T, env map[string]string, img string) []tokenRow {
	t.Helper()
	var all []map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, "", env, "token", "list", "--json", img).stdout), &all); err != nil {
		t.Fatal(err)
	}
	var out []tokenRow
	for _, m := range all {
		b, _ := json.Marshal(m)
		var r tokenRow
		json.Unmarshal(b, &r)
		if r.Type == "systemd-tpm2" {
			out = append(out, r)
		}
	}
	return out
}

// TestServeResealsAfterFallback: a volume with a TPM2 token (PCR 16) and a configured
// key-file fallback; PCR 16 changes as a firmware update would change PCR 0/7; serve
// opens it through the key file and reseals the TPM2 token; the next unlock goes
// through the TPM alone; a second serve pass reseals nothing. Then the same by hand
// with diskcryptd reseal, the recovery key as the fallback.
func TestServeResealsAfterFallback(t *testing.T) {
	tpmtest.RequirePeer(t, "cryptsetup")
	spec := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "provisioning passphrase")
	logPath := filepath.Join(dir, "audit.jsonl")
	env := map[string]string{audit.EnvPath: logPath}
	mustCLI(t, "", env, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", env, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-pcrs", "16", img)
	rec := strings.TrimSpace(mustCLI(t, "", env, "enroll", "recovery", "--key-file", key, img).stdout)
	before := tpmTokens(t, env, img)
	if len(before) != 1 {
		t.Fatalf("tokens: %+v", before)
	}
	cfg := writeSecret(t, dir, "diskcryptd.conf", "socket none\ndevice-timeout 2s\nvolume data0 "+img+" key-file="+key+",reseal=tpm2\n")

	// Nothing changed: the TPM opens it, no reseal. (Mapping an image file fails on
	// the host: serve --once exits 2, the key was recovered all the same.)
	r := cli(t, "", env, "serve", "--once", "--config", cfg, "--tpm2-device", spec)
	if !strings.Contains(r.stdout, "not a block device") || strings.Contains(r.stdout, "resealed") {
		t.Fatalf("serve with unchanged PCRs: %+v", r)
	}
	mustCLI(t, "", env, "pcr", "extend", "--tpm2-device", spec, "--pcr", "16", "--data", "firmware 2.0")
	if r := cli(t, "", env, "unlock", "--test", "--tpm2-device", spec, img); r.code != exitPermission {
		t.Fatalf("TPM2 unlock after the PCR change: %+v", r)
	}
	r = cli(t, "", env, "serve", "--once", "--config", cfg, "--tpm2-device", spec)
	if !strings.Contains(r.stdout, "resealed: TPM2 token 0 (keyslots [1]) resealed as token 0 (keyslot") {
		t.Fatalf("serve after the PCR change did not reseal:\n%s\n%s", r.stdout, r.stderr)
	}
	after := tpmTokens(t, env, img)
	if len(after) != 1 || after[0].ID != 0 || after[0].Keyslots[0] == before[0].Keyslots[0] {
		t.Fatalf("TPM2 tokens after reseal: %+v (before %+v)", after, before)
	}
	// The TPM alone opens it again; cryptsetup sees a sound header.
	if out := mustCLI(t, "", env, "unlock", "--test", "--tpm2-device", spec, img).stdout; !strings.Contains(out, "token 0 (systemd-tpm2") {
		t.Fatalf("unlock after reseal: %s", out)
	}
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
	r = cli(t, "", env, "serve", "--once", "--config", cfg, "--tpm2-device", spec)
	if strings.Contains(r.stdout, "resealed") {
		t.Fatalf("second serve resealed again: %s", r.stdout)
	}

	// By hand: the provisioning passphrase is gone, the recovery key is the fallback.
	mustCLI(t, "", env, "keyslot", "remove", "--slot", "0", img)
	mustCLI(t, "", env, "pcr", "extend", "--tpm2-device", spec, "--pcr", "16", "--data", "firmware 3.0")
	if r := cli(t, "", env, "reseal", "--tpm2-device", spec, img); r.code != exitPermission || !strings.Contains(r.stderr, "--key-file") {
		t.Fatalf("reseal without a fallback: %+v", r)
	}
	out := mustCLI(t, rec, env, "reseal", "--tpm2-device", spec, "--key-file", "-", img).stdout
	if !strings.Contains(out, "TPM2 token 0") || !strings.Contains(out, "sha256 PCRs 16") {
		t.Fatalf("reseal by hand: %s", out)
	}
	mustCLI(t, "", env, "unlock", "--test", "--tpm2-device", spec, img)
	if out := mustCLI(t, rec, env, "reseal", "--tpm2-device", spec, "--key-file", "-", img).stdout; !strings.Contains(out, "nothing to reseal") {
		t.Fatalf("reseal with nothing stale: %s", out)
	}

	recs, err := audit.ReadFile(logPath, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var reseals []audit.Record
	for _, r := range recs {
		if r.Kind == audit.KindReseal {
			reseals = append(reseals, r)
		}
	}
	if len(reseals) != 2 || reseals[0].Actor != "daemon" || reseals[0].Volume != "data0" || reseals[1].Actor != "cli" ||
		reseals[0].Result != audit.Success || reseals[1].Result != audit.Success {
		t.Fatalf("reseal records: %+v", reseals)
	}
	raw, _ := os.ReadFile(logPath)
	if strings.Contains(string(raw), rec) || strings.Contains(string(raw), "provisioning passphrase") {
		t.Fatal("a secret reached the audit log")
	}
}

// TestResealThroughTang: diskcryptd reseal by hand needs no key file when another
// token (here Tang, through clevis) opens the volume.
func TestResealThroughTang(t *testing.T) {
	testpeer.Require(t, "socat")
	spec := tpmtest.StartSwtpm(t)
	srv := tangtest.Start(t)
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	env := map[string]string{audit.EnvPath: filepath.Join(dir, "audit.jsonl")}
	mustCLI(t, "", env, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", env, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-pcrs", "16", img)
	mustCLI(t, "", env, "enroll", "clevis", "--key-file", key, "--pin", "tang", "--tang-thumbprint", srv.SigningThumbprints()[0],
		"--config", fmt.Sprintf(`{"url":%q}`, srv.URL), img)
	mustCLI(t, "", env, "keyslot", "remove", "--slot", "0", img)
	mustCLI(t, "", env, "pcr", "extend", "--tpm2-device", spec, "--pcr", "16", "--data", "firmware 2.0")
	out := mustCLI(t, "", env, "reseal", "--tpm2-device", spec, img).stdout
	if !strings.Contains(out, "TPM2 token 0 (keyslots [1]) resealed as token 0") {
		t.Fatalf("reseal through Tang: %s", out)
	}
	srv.Stop()
	if out := mustCLI(t, "", env, "unlock", "--test", "--tpm2-device", spec, img).stdout; !strings.Contains(out, "token 0 (systemd-tpm2") {
		t.Fatalf("unlock with tangd stopped: %s", out)
	}
}
