package clevis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testimg"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// newVolume formats a small LUKS2 image with cryptsetup and a cheap passphrase.
func newVolume(t *testing.T) (img, keyFile string) {
	t.Helper()
	testpeer.Require(t, "cryptsetup")
	img = testimg.Sparse(t, 20<<20)
	keyFile = filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("existing passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, nil, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file", keyFile, img)
	return img, keyFile
}

// run runs a program and returns its standard output; it fails the test on error.
func run(t *testing.T, env []string, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(env, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func runErr(env []string, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out, nil
}

// enroll binds a new keyslot with our Enroller and returns the keyslot.
func enroll(t *testing.T, img, keyFile string, pins *Pins, pin, cfg string) int {
	t.Helper()
	ctx := context.Background()
	v, err := luks2.OpenFile(img, luks2.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	key, _ := os.ReadFile(keyFile)
	vk, _, err := v.Unlock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	en, err := (&Enroller{Pins: pins, Pin: pin, Config: json.RawMessage(cfg)}).Enroll(ctx)
	if err != nil {
		t.Fatalf("enroll %s %s: %v", pin, cfg, err)
	}
	defer clear(en.Passphrase)
	tok, _ := json.Marshal(en.Token)
	slot, _, err := v.AddKeyslotWithToken(ctx, vk, en.Passphrase, luks2.AnySlot,
		&luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, tok, luks2.AnyToken)
	if err != nil {
		t.Fatal(err)
	}
	return slot
}

// clevisOpens checks that clevis recovers the passphrase of slot and that cryptsetup
// accepts it (piped through standard input).
func clevisOpens(t *testing.T, env []string, img string, slot int) {
	t.Helper()
	testpeer.Require(t, "clevis", "clevis-luks-pass")
	pass := run(t, env, nil, "clevis", "luks", "pass", "-d", img, "-s", fmt.Sprint(slot))
	if len(pass) == 0 {
		t.Fatal("clevis luks pass printed nothing")
	}
	run(t, nil, pass, "cryptsetup", "open", "--test-passphrase", "--key-slot", fmt.Sprint(slot), img)
}

// clevisBind binds img with clevis luks bind and returns the new token's id.
func clevisBind(t *testing.T, env []string, img, keyFile, pin, cfg string) {
	t.Helper()
	testpeer.Require(t, "clevis", "clevis-luks-bind")
	run(t, env, nil, "clevis", "luks", "bind", "-y", "-k", keyFile, "-d", img, pin, cfg)
}

// ourOpen recovers the volume key through img's clevis tokens with p and returns
// the error of the last token tried (nil when one opened the volume).
func ourOpen(t *testing.T, ctx context.Context, img string, p *Protector) error {
	t.Helper()
	v, err := luks2.OpenFile(img, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var last error = fmt.Errorf("no clevis token")
	for _, tk := range v.Metadata().Tokens {
		raw, err := v.ExportToken(tk.ID)
		if err != nil {
			t.Fatal(err)
		}
		pass, err := p.Unseal(ctx, unlock.Token{ID: tk.ID, Type: tk.Type, Keyslots: tk.Keyslots, JSON: raw})
		if err != nil {
			last = err
			continue
		}
		for _, s := range tk.Keyslots {
			vk, err := v.UnlockKeyslot(ctx, s, pass)
			if err == nil {
				vk.Wipe()
				clear(pass)
				return nil
			}
			last = err
		}
		clear(pass)
	}
	return last
}

// flushTPM flushes the sessions and objects tpm2-tools (under clevis) leave on a
// swtpm reached without a resource manager.
func flushTPM(t *testing.T, env []string) {
	t.Helper()
	testpeer.Require(t, "tpm2_flushcontext")
	for _, f := range []string{"--transient-object", "--loaded-session", "--saved-session"} {
		run(t, env, nil, "tpm2_flushcontext", f)
	}
}
