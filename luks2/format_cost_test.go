package luks2

import (
	"context"
	"regexp"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestFormatForcedKDFDigestLikeCryptsetup: with a fixed KDF cost (no benchmark),
// Format writes the digest cryptsetup's `luksFormat --pbkdf-force-iterations` writes:
// 1000 PBKDF2-SHA256 iterations, not a 125 ms benchmark (which made format several
// times slower than cryptsetup's with identical parameters).
func TestFormatForcedKDFDigestLikeCryptsetup(t *testing.T) {
	cs := testpeer.Path(t, "cryptsetup")
	dir := t.TempDir()
	kf := writeKeyFile(t, dir, []byte("pw"))
	theirs := newImage(t, dir, 20<<20)
	run(t, nil, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--hash", "sha256",
		"--pbkdf-force-iterations", "1000", "--key-file", kf, theirs)
	ours := newImage(t, dir, 20<<20)
	v, vk, err := FormatFile(context.Background(), ours, []byte("pw"), &FormatOptions{Keyslot: KeyslotOptions{KDF: KDFOptions{Type: KDFPBKDF2, Hash: "sha256", Iterations: 1000}}})
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	v.Close()
	re := regexp.MustCompile(`(?s)Digests:.*?Iterations:\s*(\d+)`)
	digestIter := func(img string) string {
		m := re.FindStringSubmatch(run(t, nil, cs, "luksDump", img))
		if m == nil {
			t.Fatalf("no digest iterations in luksDump of %s", img)
		}
		return m[1]
	}
	if o, c := digestIter(ours), digestIter(theirs); o != c {
		t.Fatalf("digest iterations: ours %s, cryptsetup's %s", o, c)
	}
}
