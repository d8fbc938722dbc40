package luks2

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 32<<20)
	opts := &FormatOptions{Keyslot: KeyslotOptions{KDF: KDFOptions{Type: "argon2id", Iterations: 4, MemoryKiB: 32 << 10}}, digestIterations: 1000}
	v, vk, err := FormatFile(context.Background(), img, []byte("pass"), opts)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	out, err := exec.Command("cryptsetup", "luksDump", img).CombinedOutput()
	t.Logf("%s %v", out, err)
	os.WriteFile(filepath.Join(dir, "k"), []byte("pass"), 0o600)
	out, err = exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", filepath.Join(dir, "k"), img).CombinedOutput()
	t.Logf("%s %v", out, err)
	v, err = OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	k2, slot, err := v.Unlock(context.Background(), []byte("pass"))
	if err != nil || !k2.Equal(vk) || slot != 0 {
		t.Fatal(err, slot)
	}
}
