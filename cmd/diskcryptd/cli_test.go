package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"

	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

// result is one run of the command line, in process.
type result struct {
	code           int
	stdout, stderr string
}

// cli runs diskcryptd with args, stdin and extra environment variables; the logger
// runs at debug level so that tests see every log line.
func cli(t *testing.T, stdin string, envv map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	auditLog := filepath.Join(t.TempDir(), "audit.jsonl") // never the host's /var/log
	getenv := func(k string) string {
		if v, ok := envv[k]; ok {
			return v
		}
		if k == "DISKCRYPTD_AUDIT_LOG" {
			return auditLog
		}
		return ""
	}
	code := run(context.Background(), append([]string{"--debug"}, args...), strings.NewReader(stdin), &out, &errb, getenv)
	return result{code, out.String(), errb.String()}
}

func mustCLI(t *testing.T, stdin string, envv map[string]string, args ...string) result {
	t.Helper()
	r := cli(t, stdin, envv, args...)
	if r.code != 0 {
		t.Fatalf("diskcryptd %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// peer runs a real tool and fails the test on error.
func peer(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	testpeer.Require(t, name)
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// writeSecret writes a 0600 key file.
func writeSecret(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newImage(t *testing.T, dir string, mib int64) string {
	t.Helper()
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, mib<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

var fastKDF = []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}

func TestFormatInteropAndVolumeKey(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	for _, tc := range []struct {
		name string
		args []string
		want map[string]string // luksDump lines that must appear
	}{
		{"defaults-fast-kdf", nil, map[string]string{"cipher:": "aes-xts-plain64", "sector:": "4096 [bytes]"}},
		{"256-bit-512-sectors", []string{"--key-size", "256", "--sector-size", "512", "--label", "data0"}, map[string]string{"sector:": "512 [bytes]", "Label:": "data0"}},
		{"argon2id", []string{"--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4", "--persistent-flag", "allow-discards"}, map[string]string{"PBKDF:": "argon2id", "Flags:": "allow-discards"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := newImage(t, dir, 40)
			key := writeSecret(t, dir, "key", "correct horse")
			args := append([]string{"format", "--key-file", key}, fastKDF...)
			if len(tc.args) > 0 && tc.args[0] == "--pbkdf" {
				args = []string{"format", "--key-file", key}
			}
			args = append(append(args, tc.args...), img)
			mustCLI(t, "", nil, args...)
			dump := peer(t, nil, "cryptsetup", "luksDump", img)
			for k, v := range tc.want {
				found := false
				for _, line := range strings.Split(dump, "\n") {
					if strings.Contains(line, k) && strings.Contains(line, v) {
						found = true
					}
				}
				if !found {
					t.Errorf("cryptsetup luksDump lacks %q %q:\n%s", k, v, dump)
				}
			}
			peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
			ours := strings.TrimSpace(mustCLI(t, "correct horse", nil, "dump", "--volume-key", "--key-file", "-", img).stdout)
			theirs := peer(t, nil, "cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", key, img)
			if !strings.Contains(strings.Join(strings.Fields(theirs), ""), ours) || len(ours) < 64 {
				t.Fatalf("volume key %q not in cryptsetup's dump:\n%s", ours, theirs)
			}
			var md struct {
				Cipher   string
				Keyslots []json.RawMessage
			}
			if err := json.Unmarshal([]byte(mustCLI(t, "", nil, "dump", "--json", img).stdout), &md); err != nil {
				t.Fatal(err)
			}
			if md.Cipher != "aes-xts-plain64" || len(md.Keyslots) != 1 {
				t.Fatalf("dump --json: %+v", md)
			}
		})
	}
}

func TestFormatGuardAndExitCodes(t *testing.T) {
	testpeer.Require(t, "mkfs.ext4")
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	peer(t, nil, "mkfs.ext4", "-q", "-F", img)
	r := cli(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	if r.code != exitDevice || !strings.Contains(r.stderr, "ext4") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("format over ext4: exit %d, stderr %q; want exit %d naming ext4 and --force", r.code, r.stderr, exitDevice)
	}
	mustCLI(t, "", nil, append(append([]string{"format", "--force", "--key-file", key}, fastKDF...), img)...)
	r = cli(t, "wrong", nil, "unlock", "--test", "--key-file", "-", img)
	if r.code != exitPermission || !strings.Contains(r.stderr, "no keyslot accepts this key") || strings.Contains(r.stderr, "goroutine") {
		t.Fatalf("wrong key: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := cli(t, "", nil, "format", img); r.code != exitUsage || !strings.Contains(r.stderr, "--key-file") {
		t.Fatalf("format without key: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := cli(t, "", nil, "dump", filepath.Join(dir, "key")); r.code != exitDevice {
		t.Fatalf("dump of a non-LUKS file: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestKeyslotsTokensHeader(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "first")
	key2 := writeSecret(t, dir, "key2", "second")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", nil, append(append([]string{"keyslot", "add", "--key-file", key, "--new-key-file", key2, "--key-slot", "3"}, fastKDF...), img)...)
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-slot", "3", "--key-file", key2, img)
	tok := writeSecret(t, dir, "tok.json", `{"type":"x-operator","keyslots":[],"note":"kept as written","n":[1,2]}`)
	mustCLI(t, "", nil, "token", "import", "--json-file", tok, "--token-id", "5", "--key-slot", "3", img)
	exp := peer(t, nil, "cryptsetup", "token", "export", "--token-id", "5", img)
	var got map[string]any
	if err := json.Unmarshal([]byte(exp), &got); err != nil || got["note"] != "kept as written" || got["keyslots"].([]any)[0] != "3" {
		t.Fatalf("cryptsetup token export: %s (%v)", exp, err)
	}
	peer(t, nil, "cryptsetup", "token", "import", "--token-id", "7", "--json-file", tok, img)
	if out := mustCLI(t, "", nil, "token", "export", "--token-id", "7", img).stdout; !strings.Contains(out, `"kept as written"`) {
		t.Fatalf("our export of cryptsetup's token: %s", out)
	}
	mustCLI(t, "", nil, "keyslot", "remove", "--slot", "3", img)
	if r := cli(t, "", nil, "keyslot", "remove", "--slot", "0", img); r.code != exitUsage || !strings.Contains(r.stderr, "last") {
		t.Fatalf("removing the last keyslot without --force: %+v", r)
	}
	if r := cli(t, "", nil, "unlock", "--test", "--key-file", key2, img); r.code != exitPermission {
		t.Fatalf("removed keyslot still opens: %+v", r)
	}
	// Back up, destroy the primary header, open from the secondary, repair.
	backup := filepath.Join(dir, "hdr.bak")
	mustCLI(t, "", nil, "header", "backup", "--header-backup-file", backup, img)
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, 4096), 0)
	f.Close()
	if out := mustCLI(t, "", nil, "dump", img).stdout; !strings.Contains(out, "primary DAMAGED") {
		t.Fatalf("dump does not report the damaged primary:\n%s", out)
	}
	mustCLI(t, "", nil, "unlock", "--test", "--key-file", key, img)
	mustCLI(t, "", nil, "repair", img)
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
	// Erase, then restore the backup: the key works again.
	if r := cli(t, "", nil, "erase", img); r.code != exitUsage {
		t.Fatalf("erase without confirmation: %+v", r)
	}
	mustCLI(t, "", nil, "erase", "--batch-mode", img)
	if r := cli(t, "", nil, "unlock", "--test", "--key-file", key, img); r.code != exitPermission {
		t.Fatalf("erased volume opens: %+v", r)
	}
	mustCLI(t, "", nil, "header", "restore", "--header-backup-file", backup, img)
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
}

func TestTPM2EnrollUnlockTamperRecovery(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	spec := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", nil, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-pcrs", "7+11", img)
	rec := strings.TrimSpace(mustCLI(t, "", nil, "enroll", "recovery", "--key-file", key, img).stdout)
	// cryptsetup accepts the recovery key as a passphrase.
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", writeSecret(t, dir, "rec", rec), img)

	if r := mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, img); !strings.Contains(r.stdout, "systemd-tpm2") {
		t.Fatalf("unlock --test: %+v", r)
	}
	// A PCR outside the policy does not matter.
	mustCLI(t, "", nil, "pcr", "extend", "--tpm2-device", spec, "--pcr", "12", "--data", "unrelated", img)
	mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, img)
	// A PCR inside it does.
	mustCLI(t, "", nil, "pcr", "extend", "--tpm2-device", spec, "--pcr", "11", "--data", "tampered")
	r := cli(t, "", nil, "unlock", "--test", "--tpm2-device", spec, img)
	if r.code != exitPermission || !strings.Contains(r.stderr, "PCRs") || !strings.Contains(r.stderr, "recovery key") {
		t.Fatalf("tampered unlock: exit %d\n%s", r.code, r.stderr)
	}
	// The recovery key, typed without dashes in upper case, still opens it.
	typed := strings.ToUpper(strings.ReplaceAll(rec, "-", "")) + "\n"
	mustCLI(t, typed, nil, "unlock", "--test", "--key-file", "-", img)
}

func TestTPM2PIN(t *testing.T) {
	spec := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", map[string]string{"NEWPIN": "1234"}, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-with-pin", img)
	if r := cli(t, "", nil, "unlock", "--test", "--tpm2-device", spec, img); r.code != exitPermission || !strings.Contains(r.stderr, "PIN") {
		t.Fatalf("no PIN: %+v", r)
	}
	if r := cli(t, "", map[string]string{"PIN": "9999"}, "unlock", "--test", "--tpm2-device", spec, img); r.code != exitPermission || !strings.Contains(r.stderr, "wrong PIN") {
		t.Fatalf("wrong PIN: %+v", r)
	}
	mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, "--tpm2-pin-file", writeSecret(t, dir, "pin", "1234\n"), img)
}

// TestInteropEnrolledElsewhere: volumes enrolled by systemd-cryptenroll and by clevis
// unlock through diskcryptd's tokens.
func TestInteropEnrolledElsewhere(t *testing.T) {
	testpeer.Require(t, "cryptsetup", "systemd-cryptenroll", "clevis")
	spec := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	key := writeSecret(t, dir, "key", "pw")
	sysImg := newImage(t, dir, 40)
	peer(t, nil, "cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, sysImg)
	peer(t, nil, "systemd-cryptenroll", "--unlock-key-file="+key, "--tpm2-device="+spec, "--tpm2-pcrs=7", sysImg)
	if r := mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, sysImg); !strings.Contains(r.stdout, "systemd-tpm2") {
		t.Fatalf("systemd-enrolled: %+v", r)
	}
	clevisImg := filepath.Join(dir, "clevis.img")
	os.WriteFile(clevisImg, nil, 0o600)
	os.Truncate(clevisImg, 40<<20)
	peer(t, nil, "cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, clevisImg)
	tctiEnv := []string{"TPM2TOOLS_TCTI=" + spec}
	peer(t, tctiEnv, "clevis", "luks", "bind", "-y", "-k", key, "-d", clevisImg, "tpm2", `{"pcr_ids":"7"}`)
	// systemd-cryptenroll and clevis (tpm2-tools) each leave a session loaded in a TPM
	// that has no resource manager in front of it; the kernel's /dev/tpmrm0 flushes
	// them when the process exits. Do what it would do.
	peer(t, tctiEnv, "tpm2_flushcontext", "--loaded-session")
	if r := mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, clevisImg); !strings.Contains(r.stdout, "clevis") {
		t.Fatalf("clevis-enrolled: %+v", r)
	}
}

// TestCanaryNeverLogged plants a canary passphrase and PIN and runs every command that
// handles them at debug level: no output line carries them.
func TestCanaryNeverLogged(t *testing.T) {
	spec := tpmtest.StartSwtpm(t)
	const canary = "CANARY-3b9f0d2e-never-log-me"
	const pinCanary = "PIN-CANARY-55110"
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", canary)
	var all strings.Builder
	record := func(r result) { all.WriteString(r.stdout + r.stderr) }
	record(mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...))
	record(mustCLI(t, "", map[string]string{"NEWPIN": pinCanary}, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-with-pin", img))
	record(mustCLI(t, "", map[string]string{"PIN": pinCanary}, "unlock", "--test", "--tpm2-device", spec, img))
	record(cli(t, "", map[string]string{"PIN": pinCanary + "x"}, "unlock", "--test", "--tpm2-device", spec, img))
	record(cli(t, canary+"x", nil, "unlock", "--test", "--key-file", "-", img))
	record(mustCLI(t, canary, nil, "keyslot", "add", "--key-file", "-", "--new-key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img))
	record(mustCLI(t, "", nil, "dump", "--json", img))
	out := all.String()
	if !strings.Contains(out, "token") {
		t.Fatalf("expected some log output, got %q", out)
	}
	for _, c := range []string{canary, pinCanary} {
		if strings.Contains(out, c) {
			t.Fatalf("canary %q leaked into output:\n%s", c, out)
		}
	}
}

// TestSystemdUnsealsOurEnrolment: a volume formatted and enrolled by this command line
// is unsealed by systemd-cryptsetup 252 through its own TPM2 token code. The host has
// no device-mapper, so systemd fails at activation ("Failed to activate with TPM2
// acquired key: Operation not supported"; a TPM failure is "TPM2 operation failed"),
// which does not prove the key right: tpm2-tools then unseals the token independently
// and the passphrase systemd derives must open the keyslot.
func TestSystemdUnsealsOurEnrolment(t *testing.T) {
	sdc := tpmtest.SystemdCryptsetup(t)
	spec := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", nil, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-pcrs", "7", img)
	// Only the TPM2 keyslot may open it: drop the passphrase.
	mustCLI(t, "", nil, "keyslot", "remove", "--slot", "0", img)
	cmd := exec.Command(sdc, "attach", "diskcryptd-cli", img, "-", "tpm2-device="+spec+",headless=true")
	out, _ := cmd.CombinedOutput()
	t.Logf("systemd-cryptsetup said:\n%s", out)
	if bytes.Contains(out, []byte("TPM2 operation failed")) || bytes.Contains(out, []byte("Failed to unseal")) ||
		!bytes.Contains(out, []byte("Failed to activate with TPM2 acquired key: Operation not supported")) {
		t.Fatalf("systemd-cryptsetup did not unlock the keyslot with our TPM2 token:\n%s", out)
	}
	// That output is also what a wrong key would give once device-mapper is missing:
	// prove the key systemd derives opens the keyslot, with an independent unseal.
	tokOut, err := exec.Command("cryptsetup", "token", "export", "--token-id", "0", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Keyslots []string `json:"keyslots"`
	}
	if err := json.Unmarshal(tokOut, &tok); err != nil || len(tok.Keyslots) != 1 {
		t.Fatalf("token 0: %v %s", err, tokOut)
	}
	slot, _ := strconv.Atoi(tok.Keyslots[0])
	pass, err := tpmtest.UnsealWithTools(t, spec, tokOut, "")
	if err != nil {
		t.Fatalf("tpm2-tools could not unseal the CLI's token: %v", err)
	}
	tpmtest.ProveKeyslot(t, img, slot, pass)
}

// TestBatchModeEverywhere: cryptsetup accepts --batch-mode (-q) with every action and
// before it; so does every diskcryptd command and subcommand.
func TestBatchModeEverywhere(t *testing.T) {
	cmds := [][]string{
		{"format"}, {"dump"}, {"keyslot", "add"}, {"keyslot", "remove"}, {"keyslot", "list"},
		{"token", "import"}, {"token", "export"}, {"token", "remove"}, {"token", "list"},
		{"header", "backup"}, {"header", "restore"}, {"repair"}, {"erase"},
		{"enroll", "tpm2"}, {"enroll", "recovery"}, {"unlock"}, {"lock"}, {"status"},
		{"serve"}, {"pcr", "read"}, {"pcr", "extend"},
	}
	for _, c := range cmds {
		for _, flag := range []string{"--batch-mode", "-q"} {
			t.Run(strings.Join(c, "-")+flag, func(t *testing.T) {
				args := append(append([]string{}, c...), flag, "-h")
				r := cli(t, "", nil, args...)
				if r.code != 0 || strings.Contains(r.stderr, "not defined") {
					t.Errorf("diskcryptd %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
				}
			})
		}
	}
	// Global position, as "cryptsetup -q luksErase".
	dir := t.TempDir()
	img := newImage(t, dir, 20)
	key := writeSecret(t, dir, "key", "k")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	if r := cli(t, "", nil, "erase", img); r.code != exitUsage {
		t.Fatalf("erase without --batch-mode: exit %d, want %d", r.code, exitUsage)
	}
	mustCLI(t, "", nil, "-q", "erase", img)
}

// TestMissingDeviceExit4: a device path that does not exist is "wrong device
// specified" (exit 4), as cryptsetup and the README say; a missing key file is a usage
// error (exit 1), as cryptsetup's "Failed to open key file".
func TestMissingDeviceExit4(t *testing.T) {
	dir := t.TempDir()
	key := writeSecret(t, dir, "key", "k")
	missing := filepath.Join(dir, "no-such-device")
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"dump", missing}, exitDevice},
		{[]string{"keyslot", "list", missing}, exitDevice},
		{[]string{"token", "list", missing}, exitDevice},
		{[]string{"format", "--key-file", key, missing}, exitDevice},
		{[]string{"unlock", "--test", "--key-file", key, missing}, exitDevice},
		{[]string{"repair", missing}, exitDevice},
		{[]string{"header", "backup", "--header-backup-file", filepath.Join(dir, "hb"), missing}, exitDevice},
		{[]string{"enroll", "recovery", "--key-file", key, missing}, exitDevice},
		{[]string{"erase", "-q", missing}, exitDevice},
		{[]string{"format", "--key-file", filepath.Join(dir, "no-such-key"), newImage(t, dir, 20)}, exitUsage},
	} {
		if r := cli(t, "", nil, tc.args...); r.code != tc.want {
			t.Errorf("diskcryptd %s: exit %d, want %d\n%s", strings.Join(tc.args, " "), r.code, tc.want, r.stderr)
		}
	}
}

// TestInsecureKeyFile: a key file group or others may access is refused with the
// fix in the hint, unless --allow-insecure-key-file; standard input is fine.
func TestInsecureKeyFile(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, 20)
	key := writeSecret(t, dir, "key", "secret")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o602} {
		if err := os.Chmod(key, mode); err != nil {
			t.Fatal(err)
		}
		r := cli(t, "", nil, "unlock", "--test", "--key-file", key, img)
		if r.code != exitUsage || !strings.Contains(r.stderr, "accessible by group or others") || !strings.Contains(r.stderr, "chmod 600") {
			t.Errorf("mode %#o: exit %d, stderr %q; want a refusal with a hint", mode, r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "secret") {
			t.Errorf("mode %#o: the key leaked into the error: %s", mode, r.stderr)
		}
		mustCLI(t, "", nil, "unlock", "--test", "--allow-insecure-key-file", "--key-file", key, img)
	}
	if err := os.Chmod(key, 0o400); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "", nil, "unlock", "--test", "--key-file", key, img)
	mustCLI(t, "secret", nil, "unlock", "--test", "--key-file", "-", img)
	// The same rule for the TPM2 PIN file.
	pin := writeSecret(t, dir, "pin", "1234")
	if err := os.Chmod(pin, 0o644); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "", nil, "enroll", "tpm2", "--tpm2-device", "swtpm:path="+filepath.Join(dir, "none"), "--tpm2-with-pin", "--tpm2-pin-file", pin, "--key-file", key, img)
	if r.code == 0 || !strings.Contains(r.stderr, "accessible by group or others") {
		t.Errorf("a 0644 PIN file was not refused: exit %d: %s", r.code, r.stderr)
	}
}

// TestReadSecret: whole input byte for byte across buffer growth, nothing beyond the
// limit, and every buffer it outgrew wiped.
func TestReadSecret(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513, 5000, 1 << 16} {
		in := bytes.Repeat([]byte{0xA5}, n)
		got, err := readSecret(&chunkReader{data: in, chunk: 100}, 1<<16)
		if err != nil || !bytes.Equal(got, in) {
			t.Fatalf("n=%d: %d bytes, %v", n, len(got), err)
		}
	}
	if _, err := readSecret(bytes.NewReader(make([]byte, 1<<16+1)), 1<<16); !errors.Is(err, ErrSecretTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	// The reader keeps every buffer it was handed: all but the result must be wiped.
	r := &chunkReader{data: bytes.Repeat([]byte{0xA5}, 3000), chunk: 700, keep: true}
	got, err := readSecret(r, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	// A buffer is known by the address of its last byte; each slice the reader got
	// covers the part of its buffer that reads filled.
	gotEnd := &got[:cap(got)][cap(got)-1]
	outgrown := 0
	for i, b := range r.seen {
		full := b[:cap(b)]
		if len(full) == 0 || &full[len(full)-1] == gotEnd {
			continue // the final buffer, which the caller wipes
		}
		outgrown++
		if bytes.IndexByte(full, 0xA5) >= 0 {
			t.Errorf("read %d: a buffer readSecret outgrew was not wiped", i)
		}
	}
	if outgrown == 0 {
		t.Fatal("the test never made readSecret grow its buffer")
	}
}

// chunkReader returns data a chunk at a time and, with keep, remembers the buffers it
// was asked to fill.
type chunkReader struct {
	data  []byte
	chunk int
	keep  bool
	seen  [][]byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.keep {
		c.seen = append(c.seen, p)
	}
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	return n, nil
}

// TestStatusSocketPermission: a user outside root and the diskcryptd group is told why
// the daemon's status is missing, instead of seeing nothing.
func TestStatusSocketPermission(t *testing.T) {
	setpriv := testpeer.Path(t, "setpriv")
	if os.Geteuid() != 0 {
		testpeer.Missing(t, "needs root to run the CLI as another user")
	}
	// Not t.TempDir: its parent is private to root, and the other user must reach
	// both the binary and the socket.
	dir, err := os.MkdirTemp("", "dcstatus")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "diskcryptd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chmod(sock, 0o660); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "status", "--socket", sock).CombinedOutput()
	if !strings.Contains(string(out), "permission denied") || !strings.Contains(string(out), "group diskcryptd") {
		t.Fatalf("no permission hint:\n%s", out)
	}
}
