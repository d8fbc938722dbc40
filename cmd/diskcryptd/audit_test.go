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

// TestAuditTrail runs every audited command against a real image and swtpm, with a
// canary passphrase, and reads the trail back with "diskcryptd audit": one record per
// key release and per change, PCR values of TPM releases, failures recorded, and
// neither the canary nor the recovery key anywhere in the log or the output.
func TestAuditTrail(t *testing.T) {
	spec := tpmtest.StartSwtpm(t)
	const canary = "CANARY-audit-6d1e44b0"
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", canary)
	key2 := writeSecret(t, dir, "key2", canary+"-second")
	logPath := filepath.Join(dir, "log", "audit.jsonl")
	env := map[string]string{audit.EnvPath: logPath}
	var out strings.Builder
	run := func(must bool, stdin string, args ...string) result {
		t.Helper()
		var r result
		if must {
			r = mustCLI(t, stdin, env, args...)
		} else {
			r = cli(t, stdin, env, args...)
		}
		out.WriteString(r.stdout + r.stderr)
		return r
	}
	run(true, "", append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	run(true, "", "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-pcrs", "16", img)
	recKey := strings.TrimSpace(run(true, "", "enroll", "recovery", "--key-file", key, img).stdout)
	run(true, "", append(append([]string{"keyslot", "add", "--key-file", key, "--new-key-file", key2, "--key-slot", "5"}, fastKDF...), img)...)
	tok := writeSecret(t, dir, "tok.json", `{"type":"x-operator","keyslots":[]}`)
	run(true, "", "token", "import", "--json-file", tok, "--token-id", "9", img)
	run(true, "", "token", "remove", "--token-id", "9", img)
	run(true, "", "keyslot", "remove", "--slot", "5", img)
	run(true, "", "unlock", "--test", "--tpm2-device", spec, img)
	run(true, "", "pcr", "extend", "--tpm2-device", spec, "--pcr", "16", "--data", "firmware update")
	if r := run(false, "", "unlock", "--test", "--tpm2-device", spec, img); r.code != exitPermission {
		t.Fatalf("unlock after PCR 16 changed: %+v", r)
	}
	run(true, recKey, "unlock", "--test", "--key-file", "-", img)
	run(false, canary+"x", "unlock", "--test", "--key-file", "-", img)
	backup := filepath.Join(dir, "hdr.bak")
	run(true, "", "header", "backup", "--header-backup-file", backup, img)
	run(true, "", "erase", "--batch-mode", img)
	run(true, "", "header", "restore", "--header-backup-file", backup, img)

	fi, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %o", fi.Mode().Perm())
	}
	var recs []audit.Record
	js := run(true, "", "audit", "--json").stdout
	if err := json.Unmarshal([]byte(js), &recs); err != nil {
		t.Fatalf("audit --json: %v\n%s", err, js)
	}
	type ev struct {
		kind   audit.Kind
		result audit.Result
		prot   string
	}
	want := []ev{
		{audit.KindEnroll, audit.Success, "tpm2"},
		{audit.KindEnroll, audit.Success, "recovery"},
		{audit.KindKeyslotAdd, audit.Success, "passphrase"},
		{audit.KindTokenImport, audit.Success, ""},
		{audit.KindRemove, audit.Success, ""},
		{audit.KindRemove, audit.Success, ""},
		{audit.KindKeyRelease, audit.Success, "tpm2"},
		{audit.KindKeyRelease, audit.Failure, "tpm2"},
		{audit.KindKeyRelease, audit.Success, "key-file"},
		{audit.KindKeyRelease, audit.Failure, "key-file"},
		{audit.KindErase, audit.Success, ""},
		{audit.KindHeaderRestore, audit.Success, ""},
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d:\n%s", len(recs), len(want), js)
	}
	uuid := recs[0].VolumeUUID
	for i, w := range want {
		r := recs[i]
		if r.Kind != w.kind || r.Result != w.result || r.Protector != w.prot || r.Actor != "cli" || r.VolumeUUID != uuid || uuid == "" {
			t.Errorf("record %d = %+v, want %+v on volume %s", i, r, w, uuid)
		}
	}
	okRel, badRel := recs[6], recs[7]
	if okRel.PCRBank != "sha256" || len(okRel.PCRs["16"]) != 64 || len(badRel.PCRs["16"]) != 64 || okRel.PCRs["16"] == badRel.PCRs["16"] {
		t.Errorf("PCR 16 values not recorded, or not changed by the extend: %v / %v", okRel.PCRs, badRel.PCRs)
	}
	if okRel.Token == nil || okRel.TokenType != "systemd-tpm2" || !strings.Contains(badRel.Error, "PCR") {
		t.Errorf("tpm2 releases: %+v / %+v", okRel, badRel)
	}
	if len(recs[10].Keyslots) != 3 {
		t.Errorf("erase names keyslots %v, want the 3 there were", recs[10].Keyslots)
	}

	text := run(true, "", "audit").stdout
	if !strings.Contains(text, "key-release failure") || !strings.Contains(text, "pcrs=sha256:16=") {
		t.Errorf("audit text:\n%s", text)
	}
	if r := run(true, "", "audit", "--json", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("--since in the future: %s", r.stdout)
	}
	if r := run(false, "", "audit", "--since", "yesterday-ish"); r.code != exitUsage {
		t.Errorf("bad --since: %+v", r)
	}
	raw, _ := os.ReadFile(logPath)
	// The recovery key is printed once, by enroll recovery; never logged, never audited.
	if n := strings.Count(out.String(), recKey); n != 1 {
		t.Errorf("recovery key printed %d times, want once", n)
	}
	for _, secret := range []string{canary, recKey, strings.ReplaceAll(recKey, "-", "")} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("secret %q in the audit log", secret)
		}
	}
	if strings.Contains(out.String(), canary) {
		t.Fatalf("canary in the output:\n%s", out.String())
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 23, 6, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"24h":                  now.Add(-24 * time.Hour),
		"2026-11-20":           time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC),
		"2026-11-20T01:02:03Z": time.Date(2026, 11, 20, 1, 2, 3, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseSince("soon", now); err == nil {
		t.Error("parseSince(soon) accepted")
	}
}
