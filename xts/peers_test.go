package xts

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// systemPython is Debian's interpreter, which has python3-cryptography; a python3
// earlier on PATH (a pyenv shim, say) may not.
const systemPython = "/usr/bin/python3"

// opensslXTS encrypts each case's data sector by sector with OpenSSL's EVP XTS, via
// python3-cryptography's modes.XTS, with the 16-byte little-endian sector number as
// the tweak.
const opensslXTS = `
import json, sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
out = []
for c in json.load(sys.stdin):
    key, data, ss = bytes.fromhex(c["key"]), bytes.fromhex(c["data"]), c["sectorSize"]
    res = bytearray()
    for i in range(len(data) // ss):
        tweak = ((c["first"] + i * ss // 512) % 2**64).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        res += enc.update(data[i * ss:(i + 1) * ss]) + enc.finalize()
    out.append(res.hex())
json.dump(out, sys.stdout)
`

func needPythonCryptography(t *testing.T) {
	t.Helper()
	if err := exec.Command(systemPython, "-c", "import cryptography.hazmat.primitives.ciphers").Run(); err != nil {
		missingPeer(t, "%s with python3-cryptography (Debian package python3-cryptography) is needed to cross-check against OpenSSL: %v", systemPython, err)
	}
}

// TestAgainstOpenSSL cross-checks every implementation with OpenSSL's XTS on the same
// inputs as TestAgainstXCrypto.
func TestAgainstOpenSSL(t *testing.T) {
	needPythonCryptography(t)
	r := rand.NewChaCha8([32]byte{4})
	type pyCase struct {
		Key        string `json:"key"`
		Data       string `json:"data"`
		SectorSize int    `json:"sectorSize"`
		First      uint64 `json:"first"`
	}
	cases := crossCases(r)
	var keys, pts [][]byte
	var in []pyCase
	for _, cc := range cases {
		key := randomBytes(r, cc.keySize)
		// OpenSSL refuses XTS keys whose halves are equal; random ones never are.
		pt := randomBytes(r, cc.sectors*cc.sectorSize)
		keys, pts = append(keys, key), append(pts, pt)
		in = append(in, pyCase{hex.EncodeToString(key), hex.EncodeToString(pt), cc.sectorSize, cc.first})
	}
	input, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(systemPython, "-c", opensslXTS)
	cmd.Stdin = bytes.NewReader(input)
	cmd.Stderr = os.Stderr
	output, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3-cryptography: %v", err)
	}
	var want []string
	if err := json.Unmarshal(output, &want); err != nil || len(want) != len(cases) {
		t.Fatalf("python3-cryptography: bad output (%d results for %d cases): %v", len(want), len(cases), err)
	}
	for i, cc := range cases {
		t.Run(cc.String(), func(t *testing.T) {
			ct := unhex(t, want[i])
			forEachImplementation(t, func(t *testing.T, im *implementation) {
				c := mustNew(t, keys[i], im)
				defer c.Close()
				if d := firstDiff(cc.run(c, pts[i], false), ct); d >= 0 {
					t.Fatalf("encrypt differs from OpenSSL at byte %d (sector %d)", d, d/cc.sectorSize)
				}
				if d := firstDiff(cc.run(c, ct, true), pts[i]); d >= 0 {
					t.Fatalf("decrypt of OpenSSL's ciphertext differs at byte %d", d)
				}
			})
		})
	}
}

// TestCryptsetupOracle lets cryptsetup encrypt a plaintext image in place
// (reencrypt --encrypt, offline, shifting the data behind a new LUKS2 header) and
// checks that every implementation decrypts the data segment back to the plaintext,
// with the volume key luksDump reveals, and encrypts the plaintext to the same bytes.
func TestCryptsetupOracle(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		missingPeer(t, "cryptsetup (Debian package cryptsetup-bin) is needed for the data-path oracle: %v", err)
	}
	const (
		reduce   = 32 << 20
		dataSize = 8 << 20
	)
	for _, tc := range []struct {
		sectorSize, keyBits int
	}{{512, 512}, {4096, 512}, {4096, 256}, {512, 256}} {
		t.Run(fmt.Sprintf("sector%d/key%d", tc.sectorSize, tc.keyBits), func(t *testing.T) {
			dir := t.TempDir()
			r := rand.NewChaCha8([32]byte{5, byte(tc.sectorSize >> 8), byte(tc.keyBits >> 8)})
			plain := randomBytes(r, dataSize)
			img := filepath.Join(dir, "disk.img")
			keyFile := filepath.Join(dir, "key")
			if err := os.WriteFile(img, append(append([]byte(nil), plain...), make([]byte, reduce)...), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(keyFile, randomBytes(r, 32), 0o600); err != nil {
				t.Fatal(err)
			}
			cryptsetup(t, "reencrypt", "--encrypt", "--type", "luks2", "--force-offline-reencrypt",
				"--reduce-device-size", "32M", "--batch-mode", "--key-file", keyFile,
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
				"--key-size", strconv.Itoa(tc.keyBits), "--sector-size", strconv.Itoa(tc.sectorSize), img)
			dump := cryptsetup(t, "luksDump", img)
			offset, sectorSize := dataSegment(t, dump)
			if sectorSize != tc.sectorSize {
				t.Fatalf("luksDump says sector size %d, want %d", sectorSize, tc.sectorSize)
			}
			key := volumeKey(t, cryptsetup(t, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", keyFile, img))
			if len(key)*8 != tc.keyBits {
				t.Fatalf("volume key is %d bits, want %d", len(key)*8, tc.keyBits)
			}
			disk, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			ct := disk[offset : offset+dataSize]
			forEachImplementation(t, func(t *testing.T, im *implementation) {
				c := mustNew(t, key, im)
				defer c.Close()
				n := dataSize
				if im == generic {
					n = 1 << 20 // the slow path gets the first MiB: enough, and quick under -race
				}
				got := make([]byte, n)
				c.DecryptSectors(got, ct[:n], sectorSize, 0)
				if d := firstDiff(got, plain[:n]); d >= 0 {
					t.Fatalf("decrypted data segment differs from the plaintext at byte %d", d)
				}
				c.EncryptSectorsParallel(got, got, sectorSize, 0)
				if d := firstDiff(got, ct[:n]); d >= 0 {
					t.Fatalf("re-encrypted plaintext differs from cryptsetup's at byte %d", d)
				}
			})
		})
	}
}

func cryptsetup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("cryptsetup", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dataSegment parses the first data segment of luksDump's output, which must be
// aes-xts-plain64.
func dataSegment(t *testing.T, dump string) (offset, sectorSize int) {
	t.Helper()
	m := regexp.MustCompile(`(?s)Data segments:\s*0: crypt\s*offset:\s*(\d+) \[bytes\].*?cipher:\s*(\S+)\s*sector:\s*(\d+) \[bytes\]`).FindStringSubmatch(dump)
	if m == nil {
		t.Fatalf("no data segment in luksDump output:\n%s", dump)
	}
	if m[2] != "aes-xts-plain64" {
		t.Fatalf("data segment cipher is %s, want aes-xts-plain64", m[2])
	}
	offset, _ = strconv.Atoi(m[1])
	sectorSize, _ = strconv.Atoi(m[3])
	return offset, sectorSize
}

// volumeKey parses the "MK dump:" hex lines of luksDump --dump-volume-key.
func volumeKey(t *testing.T, dump string) []byte {
	t.Helper()
	_, rest, ok := strings.Cut(dump, "MK dump:")
	if !ok {
		t.Fatal("no MK dump in luksDump --dump-volume-key output")
	}
	var h strings.Builder
	for _, f := range strings.Fields(rest) {
		if len(f) != 2 {
			break
		}
		h.WriteString(f)
	}
	key, err := hex.DecodeString(h.String())
	if err != nil {
		t.Fatalf("volume key: %v", err)
	}
	return key
}
