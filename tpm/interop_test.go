package tpm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// image makes a small LUKS2 image with keyslot 0 opened by the returned key file.
func image(t *testing.T) (img, keyFile string) {
	t.Helper()
	testpeer.Require(t, "cryptsetup")
	dir := t.TempDir()
	img = filepath.Join(dir, "img")
	keyFile = filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte("initial key file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, nil, "cryptsetup", "luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--batch-mode", "--key-file", keyFile, img)
	return img, keyFile
}

func run(t *testing.T, env []string, stdin []byte, name string, args ...string) string {
	t.Helper()
	out, err := runErr(env, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(env []string, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// exportToken returns token id's JSON and its keyslot.
func exportToken(t *testing.T, img string, id int) ([]byte, int) {
	t.Helper()
	out := run(t, nil, nil, "cryptsetup", "token", "export", "--token-id", itoa(id), img)
	var tok struct {
		Keyslots []string `json:"keyslots"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || len(tok.Keyslots) != 1 {
		t.Fatalf("token %d: %v %s", id, err, out)
	}
	return []byte(out), atoi(t, tok.Keyslots[0])
}

// systemdEnroll runs systemd-cryptenroll on img with args (the PIN from NEWPIN if
// pin is set) and returns token 0 and its keyslot.
func systemdEnroll(t *testing.T, spec, img, key, pin string, args ...string) ([]byte, int) {
	t.Helper()
	args = append([]string{"--unlock-key-file=" + key, "--tpm2-device=" + spec}, args...)
	var env []string
	if pin != "" {
		args = append(args, "--tpm2-with-pin=yes")
		env = []string{"NEWPIN=" + pin}
	}
	run(t, env, nil, "systemd-cryptenroll", append(args, img)...)
	return exportToken(t, img, 0)
}

// enrollImported enrols with cfg and imports the enrolment into img as
// importEnrollment does; it returns the protector and the token JSON.
func enrollImported(t *testing.T, cfg Config, img, key string) (*Protector, []byte) {
	t.Helper()
	p, err := NewProtector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e, err := p.Enroll(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return p, importEnrollment(t, img, key, e)
}

// importEnrollment adds e's passphrase as keyslot 1 of img (unlocked by key) and e's
// token as token 0, as systemd-cryptenroll would, and returns the token JSON.
func importEnrollment(t *testing.T, img, key string, e *unlock.Enrollment) []byte {
	t.Helper()
	dir := t.TempDir()
	newKey := filepath.Join(dir, "new")
	if err := os.WriteFile(newKey, e.Passphrase, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, nil, "cryptsetup", "luksAddKey", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--key-file", key, "--new-key-slot", "1", img, newKey)
	tokJSON := marshalToken(t, e.Token, 1)
	tokFile := filepath.Join(dir, "token.json")
	if err := os.WriteFile(tokFile, tokJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, nil, "cryptsetup", "token", "import", "--json-file", tokFile, "--token-id", "0", "--key-slot", "1", img)
	return tokJSON
}

func testPassphrase(t *testing.T, img string, slot int, pass []byte) {
	t.Helper()
	run(t, nil, pass, "cryptsetup", "open", "--test-passphrase", "--key-slot", itoa(slot), "--key-file", "-", img)
}

func TestInteropSystemdEnrollsWeUnseal(t *testing.T) {
	testpeer.Require(t, "systemd-cryptenroll")
	for _, tc := range []struct {
		name string
		pin  string
	}{{"no pin", ""}, {"pin", "1234"},
		// SHA-256 of these PINs has an inner zero byte (TestInnerZeroPINsAreWhatTheyClaim).
		{"inner-zero pin 8", "8"}, {"inner-zero pin 19", "19"}} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tpmtest.StartSwtpm(t)
			img, key := image(t)
			tokJSON, slot := systemdEnroll(t, spec, img, key, tc.pin, "--tpm2-pcrs=7")
			p, err := NewProtector(Config{Device: spec,
				PIN: func(context.Context, string) ([]byte, error) { return []byte(tc.pin), nil }})
			if err != nil {
				t.Fatal(err)
			}
			pass, err := p.Unseal(testCtx(t), unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{slot}, JSON: tokJSON})
			if err != nil {
				t.Fatalf("unseal systemd token %s: %v", tokJSON, err)
			}
			testPassphrase(t, img, slot, pass)
			// Changing PCR 7 breaks systemd's policy, and we say so.
			tp, err := Open(spec)
			if err != nil {
				t.Fatal(err)
			}
			err = Extend(testCtx(t), tp, 7, nil, []byte("other secure boot db"))
			tp.Close()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Unseal(testCtx(t), unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{slot}, JSON: tokJSON}); !errors.Is(err, ErrPolicyMismatch) {
				t.Fatalf("after extending PCR 7: got %v, want ErrPolicyMismatch", err)
			}
		})
	}
}

func TestInteropWeEnrollSystemdUnseals(t *testing.T) {
	testpeer.Require(t, "systemd-cryptenroll")
	sdc := tpmtest.SystemdCryptsetup(t)
	for _, tc := range []struct {
		name string
		pin  string
	}{{"no pin", ""}, {"pin", "4321"}, {"inner-zero pin 8", "8"}} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tpmtest.StartSwtpm(t)
			img, key := image(t)
			_, tokJSON := enrollImported(t, Config{Device: spec, PCRs: []int{7}, EnrollWithPIN: tc.pin != "",
				PIN: func(context.Context, string) ([]byte, error) { return []byte(tc.pin), nil }}, img, key)
			// Prove the token opens the keyslot without diskcryptd: tpm2-tools unseals
			// it as systemd would, and the passphrase systemd derives opens slot 1.
			pass, err := tpmtest.UnsealWithTools(t, spec, tokJSON, tc.pin)
			if err != nil {
				t.Fatalf("tpm2-tools could not unseal our token: %v", err)
			}
			tpmtest.ProveKeyslot(t, img, 1, pass)
			// A wrong PIN is refused by the TPM, through tpm2-tools too.
			if tc.pin != "" {
				if _, err := tpmtest.UnsealWithTools(t, spec, tokJSON, tc.pin+"0"); err == nil {
					t.Fatal("tpm2-tools unsealed with a wrong PIN")
				}
			}

			var env []string
			if tc.pin != "" {
				env = []string{"PIN=" + tc.pin}
			}
			// Each run of systemd-cryptsetup 252 leaves one session loaded on a TPM
			// without a resource manager: two runs leave too few slots for our unseal.
			for run := range 2 {
				out, _ := runErr(env, nil, sdc, "attach", "diskcryptd-interop", img, "-", "tpm2-device="+spec+",headless=true")
				if run == 0 {
					t.Logf("systemd-cryptsetup said:\n%s", out)
				}
				// On a host without device-mapper, systemd 252 prints "Failed to
				// activate with TPM2 acquired key: Operation not supported" once it has
				// unsealed our token; that the key is right is proved by the
				// independent unseal above.
				if strings.Contains(out, "TPM2 operation failed") || strings.Contains(out, "Failed to unseal") {
					t.Fatalf("systemd-cryptsetup could not unseal our token:\n%s", out)
				}
				if !strings.Contains(out, "Failed to activate with TPM2 acquired key: Operation not supported") {
					t.Fatalf("systemd-cryptsetup did not get past the TPM2 unlock:\n%s", out)
				}
			}
			// systemd-cryptsetup left its sessions loaded on the raw TPM; diskcryptd
			// flushes them (and says so) and still unseals.
			var logs bytes.Buffer
			after, err := NewProtector(Config{Device: spec, Logger: hclog.New(&hclog.LoggerOptions{Output: &logs}),
				PIN: func(context.Context, string) ([]byte, error) { return []byte(tc.pin), nil }})
			if err != nil {
				t.Fatal(err)
			}
			got, err := after.Unseal(testCtx(t), unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{1}, JSON: tokJSON})
			if err != nil {
				t.Fatalf("unseal after systemd-cryptsetup: %v", err)
			}
			if !strings.Contains(logs.String(), "flushed the sessions and objects another process left loaded") {
				t.Fatalf("systemd-cryptsetup left no stale handles, so the flush is not tested here; log:\n%s", logs.String())
			}
			if !tpmtest.KeyslotAccepts(t, img, 1, got) {
				t.Fatal("our unseal after systemd-cryptsetup does not open keyslot 1")
			}
		})
	}
}
