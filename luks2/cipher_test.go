package luks2

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// editHeaderJSON rewrites the JSON area of both header copies of the image at path
// with edit and recomputes their checksums, as anyone with write access to the disk
// can: the checksum has no key.
func editHeaderJSON(t testing.TB, path string, edit func(string) string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{0, DefaultHeaderSize} {
		h := make([]byte, DefaultHeaderSize)
		if _, err := f.ReadAt(h, off); err != nil {
			t.Fatal(err)
		}
		area := h[binHeaderSize:]
		end := strings.IndexByte(string(area), 0)
		js := edit(string(area[:end]))
		clear(area)
		copy(area, js)
		copy(h[offCsum:offCsum+lenCsum], make([]byte, lenCsum))
		copy(h[offCsum:], checksum("sha256", h))
		if _, err := f.WriteAt(h, off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHostileCipherRefused edits a header cryptsetup wrote so that its data segment
// names a cipher without an IV (or no cipher at all), recomputes the checksums, and
// checks that cryptsetup still reads the header (so the edit is a valid LUKS2 header)
// while Unlock, UnlockKeyslot and CryptTarget refuse it with ErrUnsupportedCipher.
func TestHostileCipherRefused(t *testing.T) {
	testpeer.Require(t, "cryptsetup")
	ctx := context.Background()
	dir := t.TempDir()
	pass := []byte("hostile header test")
	kf := writeKeyFile(t, dir, pass)
	for _, tc := range []struct {
		name, from, to string
		ok             bool
	}{
		{"unedited", "", "", true},
		{"serpent-xts-plain64", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"serpent-xts-plain64","sector_size"`, true},
		{"cipher_null-ecb", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"cipher_null-ecb","sector_size"`, false},
		{"aes-xts-null", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"aes-xts-null","sector_size"`, false},
		{"aes-ecb", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"aes-ecb","sector_size"`, false},
		{"aes-xts-plain (32-bit IV)", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"aes-xts-plain","sector_size"`, false},
		{"aes-cbc-plain64", `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"aes-cbc-plain64","sector_size"`, false},
		{"keyslot area cipher_null", `"encryption":"aes-xts-plain64","key_size":64}`, `"encryption":"cipher_null-ecb","key_size":64}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := newImage(t, dir, 20<<20)
			run(t, nil, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
				"--pbkdf-force-iterations", "1000", "--key-file", kf, img)
			if tc.from != "" {
				editHeaderJSON(t, img, func(js string) string {
					if !strings.Contains(js, tc.from) {
						t.Fatalf("edit does not apply to %s", js)
					}
					return strings.Replace(js, tc.from, tc.to, 1)
				})
				// cryptsetup reads the edited header: the edit is what an attacker can do.
				if out := run(t, nil, "cryptsetup", "luksDump", img); !strings.Contains(out, strings.Split(strings.Split(tc.to, `":"`)[1], `"`)[0]) {
					t.Fatalf("luksDump does not show the edit:\n%s", out)
				}
			}
			v, err := OpenFile(img, ReadOnly)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer v.Close()
			vk, _, err := v.Unlock(ctx, pass)
			if tc.ok {
				if err != nil {
					t.Fatalf("Unlock: %v", err)
				}
				ct, err := v.CryptTarget(vk)
				if err != nil {
					t.Fatalf("CryptTarget: %v", err)
				}
				ct.Key.Wipe()
				vk.Wipe()
				return
			}
			if !errors.Is(err, ErrUnsupportedCipher) || !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Unlock = %v, want ErrUnsupportedCipher", err)
			}
			t.Logf("Unlock: %v", err)
			if _, err := v.UnlockKeyslot(ctx, 0, pass); !errors.Is(err, ErrUnsupportedCipher) {
				t.Fatalf("UnlockKeyslot = %v, want ErrUnsupportedCipher", err)
			}
			if !strings.Contains(tc.name, "keyslot") {
				// The volume key is right (the digest does not cover the cipher), yet no
				// dm-crypt table is described.
				good, err := OpenFile(img, ReadOnly)
				if err != nil {
					t.Fatal(err)
				}
				defer good.Close()
				key := NewVolumeKey(dumpVolumeKey(t, "cryptsetup", img, kf))
				defer key.Wipe()
				if err := good.VerifyVolumeKey(key); err != nil {
					t.Fatalf("cryptsetup's volume key: %v", err)
				}
				if ct, err := good.CryptTarget(key); !errors.Is(err, ErrUnsupportedCipher) {
					t.Fatalf("CryptTarget = %+v, %v; want ErrUnsupportedCipher", ct, err)
				}
			}
		})
	}
}
