package main

import (
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"8S", 4096, true}, {"64M", 64 << 20, true}, {"64MiB", 64 << 20, true},
		{"1g", 1 << 30, true}, {"2KB", 2000, true}, {"", 0, false}, {"M", 0, false}, {"12X", 0, false},
		{"99999999999999T", 0, false},
	} {
		got, err := parseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

// TestReencryptCLIOtherKeyslots: rotation refuses a volume with a second passphrase
// (it would be removed) unless --drop-other-keyslots; afterwards only the
// passphrase used opens the volume, in cryptsetup too. No log line carries it.
func TestReencryptCLIOtherKeyslots(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	dir := t.TempDir()
	img, k1, k2 := filepath.Join(dir, "img"), filepath.Join(dir, "k1"), filepath.Join(dir, "k2")
	os.WriteFile(k1, []byte("canary-passphrase-one"), 0o600)
	os.WriteFile(k2, []byte("canary-passphrase-two"), 0o600)
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 20<<20)
	fast := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", k1}, fast...), img)...)
	mustCLI(t, "", nil, append(append([]string{"keyslot", "add", "--key-file", k1, "--new-key-file", k2}, fast...), img)...)
	r := cli(t, "", nil, append(append([]string{"reencrypt", "--key-file", k1}, fast...), img)...)
	if r.code != exitUsage || !strings.Contains(r.stderr, "--drop-other-keyslots") {
		t.Fatalf("want a refusal, got %d: %s", r.code, r.stderr)
	}
	oldKey := mustCLI(t, "", nil, "dump", "--volume-key", "--key-file", k1, img).stdout
	r = mustCLI(t, "", nil, append(append([]string{"reencrypt", "--drop-other-keyslots", "--key-file", k1}, fast...), img)...)
	newKey := mustCLI(t, "", nil, "dump", "--volume-key", "--key-file", k1, img).stdout
	canaries := []string{"canary-passphrase", keyHex(t, oldKey), keyHex(t, newKey), keyHex(t, oldKey)[:32], keyHex(t, newKey)[:32]}
	for _, out := range []string{r.stdout, r.stderr} {
		for _, c := range canaries {
			if strings.Contains(strings.ReplaceAll(out, " ", ""), c) {
				t.Fatal("a secret reached the output (debug log level)")
			}
		}
	}
	if keyHex(t, oldKey) == keyHex(t, newKey) {
		t.Fatal("volume key unchanged")
	}
	peer(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", k1, img)
	cs := testpeer.Path(t, "cryptsetup")
	if out, err := execOut(cs, "open", "--test-passphrase", "--key-file", k2, img); err == nil {
		t.Fatalf("the dropped passphrase still opens the volume: %s", out)
	}
}

// TestReencryptCLIEncryptRefusesFilesystemTail: --encrypt refuses, with exit code
// 4 and without changing a byte, an ext4 that fills the device.
func TestReencryptCLIEncryptRefusesFilesystemTail(t *testing.T) {
	mkfs := testpeer.Path(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 96<<20)
	if out, err := execOut(mkfs, "-q", "-F", img); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	b, _ := os.ReadFile(img)
	before := sha256.Sum256(b)
	kf := filepath.Join(t.TempDir(), "k")
	os.WriteFile(kf, []byte("pass"), 0o600)
	r := cli(t, "", nil, "reencrypt", "--encrypt", "--reduce-device-size", "32M", "--key-file", kf, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img)
	if r.code != exitDevice || !strings.Contains(r.stderr, "end of the device is in use") {
		t.Fatalf("want exit %d and a refusal, got %d: %s", exitDevice, r.code, r.stderr)
	}
	b, _ = os.ReadFile(img)
	if sha256.Sum256(b) != before {
		t.Fatal("the refusal changed the image")
	}
}

// execOut runs a program and returns its combined output.
func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// keyHex extracts the lowercase hex digits of a key dump (at least 64 of them).
func keyHex(t *testing.T, dump string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range strings.Fields(dump) {
		if len(f) >= 2 && strings.Trim(strings.ToLower(f), "0123456789abcdef") == "" {
			b.WriteString(strings.ToLower(f))
		}
	}
	if b.Len() < 64 {
		t.Fatalf("no key in %q", dump)
	}
	return b.String()
}
