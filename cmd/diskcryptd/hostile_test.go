package main

import (
	"crypto/sha256"
	"os"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

// tamperSegmentCipher rewrites the data segment's encryption in both header copies
// (16 KiB each, as format writes them) and recomputes the sha256 header checksums
// (LUKS2 spec §3.1: over the whole copy with the checksum field zeroed), as anyone
// with write access to the disk can.
func tamperSegmentCipher(t *testing.T, img, cipher string) {
	t.Helper()
	const hdr, jsonOff, csumOff = 16 << 10, 4096, 448
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, hdr} {
		h := b[off : off+hdr]
		js := string(h[jsonOff:])
		js = js[:strings.IndexByte(js, 0)]
		from := `"encryption":"aes-xts-plain64","sector_size"`
		if !strings.Contains(js, from) {
			t.Fatalf("no data segment cipher in %s", js)
		}
		js = strings.Replace(js, from, `"encryption":"`+cipher+`","sector_size"`, 1)
		clear(h[jsonOff:])
		copy(h[jsonOff:], js)
		clear(h[csumOff : csumOff+64])
		sum := sha256.Sum256(h)
		copy(h[csumOff:], sum[:])
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b[:2*hdr], 0); err != nil {
		t.Fatal(err)
	}
}

// TestUnlockRefusesHostileCipher: a header edited offline to name cipher_null-ecb or
// aes-xts-null still carries a working TPM2 token and keyslot, yet `unlock --test`
// refuses it, through the token and with the key file, and names the cipher.
func TestUnlockRefusesHostileCipher(t *testing.T) {
	tpmtest.RequirePeer(t, "cryptsetup")
	spec := tpmtest.StartSwtpm(t)
	for _, cipher := range []string{"cipher_null-ecb", "aes-xts-null"} {
		t.Run(cipher, func(t *testing.T) {
			dir := t.TempDir()
			img := newImage(t, dir, 20)
			key := writeSecret(t, dir, "key", "pw")
			mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
			mustCLI(t, "", nil, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec, "--tpm2-pcrs", "7", img)
			mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, img)
			tamperSegmentCipher(t, img, cipher)
			// The edit is a valid header to cryptsetup.
			if out := peer(t, nil, "cryptsetup", "luksDump", img); !strings.Contains(out, cipher) {
				t.Fatalf("luksDump:\n%s", out)
			}
			for _, args := range [][]string{
				{"unlock", "--test", "--tpm2-device", spec, img},
				{"unlock", "--test", "--key-file", key, img},
			} {
				r := cli(t, "", nil, args...)
				if r.code == 0 || !strings.Contains(r.stderr, cipher) || !strings.Contains(r.stderr, "restore a header backup") {
					t.Fatalf("diskcryptd %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
				}
				t.Logf("%s: exit %d: %s", args[2], r.code, strings.TrimSpace(r.stderr[strings.LastIndex(strings.TrimSpace(r.stderr), "\n")+1:]))
			}
		})
	}
}
