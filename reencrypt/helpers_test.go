package reencrypt

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	xxts "golang.org/x/crypto/xts"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/xts"
)

// fastKDF is the cheapest KDF cryptsetup accepts, for tests.
var fastKDF = luks2.MinimumCostKDF()

// refXTS en- or decrypts data (sectors of ss bytes, first tweak iv in 512-byte
// units) with golang.org/x/crypto/xts: an implementation independent of ours.
func refXTS(t testing.TB, key []byte, ss int, iv uint64, data []byte, decrypt bool) []byte {
	t.Helper()
	c, err := xxts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(data))
	for i := 0; i < len(data); i += ss {
		if decrypt {
			c.Decrypt(out[i:i+ss], data[i:i+ss], iv+uint64(i/512))
		} else {
			c.Encrypt(out[i:i+ss], data[i:i+ss], iv+uint64(i/512))
		}
	}
	return out
}

// pyScript decrypts with python3-cryptography (OpenSSL's EVP XTS): argv are the key
// file, sector size, first tweak, input and output files.
const pyScript = `
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = open(sys.argv[1], 'rb').read()
ss, iv = int(sys.argv[2]), int(sys.argv[3])
data = open(sys.argv[4], 'rb').read()
out = bytearray()
for i in range(0, len(data), ss):
    tw = (iv + i // 512).to_bytes(16, 'little')
    d = Cipher(algorithms.AES(key), modes.XTS(tw)).decryptor()
    out += d.update(data[i:i+ss]) + d.finalize()
open(sys.argv[5], 'wb').write(out)
`

// pyDecrypt decrypts the data area of img with key through python3-cryptography.
func pyDecrypt(t testing.TB, key []byte, ss int, dataOff, n int64, img string) []byte {
	t.Helper()
	testpeer.Require(t, "/usr/bin/python3")
	dir := t.TempDir()
	kf := filepath.Join(dir, "k")
	os.WriteFile(kf, key, 0o600)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ct := make([]byte, n)
	if _, err := f.ReadAt(ct, dataOff); err != nil {
		t.Fatal(err)
	}
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	os.WriteFile(in, ct, 0o600)
	cmd := exec.Command("/usr/bin/python3", "-c", pyScript, kf, strconv.Itoa(ss), "0", in, out)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("python3-cryptography: %v\n%s", err, o)
	}
	pt, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

// cryptsetup runs cryptsetup and fails the test on error.
func cryptsetup(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(testpeer.Path(t, "cryptsetup"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dumpKey returns the volume key cryptsetup recovers with the key file.
func dumpKey(t testing.TB, img, kf string) []byte {
	t.Helper()
	out := cryptsetup(t, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", kf, img)
	i := strings.Index(out, "MK dump:")
	if i < 0 {
		t.Fatalf("no key in luksDump output")
	}
	var hx strings.Builder
	for _, line := range strings.Split(out[i+len("MK dump:"):], "\n") {
		f := strings.Fields(line)
		ok := len(f) > 0
		for _, x := range f {
			if len(x) != 2 {
				ok = false
			}
		}
		if !ok {
			if hx.Len() > 0 {
				break
			}
			continue
		}
		hx.WriteString(strings.Join(f, ""))
	}
	k, err := hex.DecodeString(hx.String())
	if err != nil || len(k) == 0 {
		t.Fatalf("parsing key dump: %v", err)
	}
	return k
}

// fixture is a cryptsetup-formatted image with known plaintext in its data area.
type fixture struct {
	img, kf   string
	plain     []byte
	dataOff   int64
	ss        int
	key       []byte
	imageSize int64
}

// newFixture formats size bytes with cryptsetup (sector size ss, pbkdf2 1000) and
// fills the data area with random plaintext encrypted under the volume key by the
// reference XTS.
func newFixture(t testing.TB, dir string, size int64, ss int, extra ...string) *fixture {
	t.Helper()
	f := &fixture{img: filepath.Join(dir, "img"), kf: filepath.Join(dir, "key"), ss: ss, imageSize: size, dataOff: 16 << 20}
	if err := os.WriteFile(f.kf, []byte("passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f.img, size); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--sector-size", strconv.Itoa(ss), "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file", f.kf}, extra...)
	cryptsetup(t, append(args, f.img)...)
	v, err := luks2.OpenFile(f.img, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	f.dataOff = v.Metadata().DataOffset
	v.Close()
	f.key = dumpKey(t, f.img, f.kf)
	f.plain = make([]byte, size-f.dataOff)
	rand.Read(f.plain)
	// Our XTS makes the ciphertext (fast, also under -race); the checks decrypt
	// with python3-cryptography or golang.org/x/crypto/xts.
	c, err := xts.New(f.key)
	if err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, len(f.plain))
	c.EncryptSectorsParallel(ct, f.plain, ss, 0)
	c.Close()
	fh, err := os.OpenFile(f.img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(ct, f.dataOff); err != nil {
		t.Fatal(err)
	}
	return f
}

// checkPython checks, with cryptsetup's key and python3-cryptography, that the
// image holds the fixture's plaintext under a key other than the original one.
func (f *fixture) checkPython(t testing.TB) {
	t.Helper()
	key := dumpKey(t, f.img, f.kf)
	if bytes.Equal(key, f.key) {
		t.Fatal("volume key unchanged")
	}
	pt := pyDecrypt(t, key, f.ss, f.dataOff, int64(len(f.plain)), f.img)
	if !bytes.Equal(pt, f.plain) {
		t.Fatalf("plaintext differs after re-encryption (first difference at %d)", firstDiff(pt, f.plain))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// openFile opens img read-write as a device with its size.
func openFile(t testing.TB, img string) (*os.File, int64) {
	t.Helper()
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := fh.Stat()
	return fh, st.Size()
}

func rotateFile(t testing.TB, img string, pass []byte, o *Options) error {
	t.Helper()
	fh, size := openFile(t, img)
	defer fh.Close()
	return Rotate(context.Background(), fh, size, pass, o)
}

func resumeFile(t testing.TB, img string, pass []byte, o *Options) error {
	t.Helper()
	fh, size := openFile(t, img)
	defer fh.Close()
	return Resume(context.Background(), fh, size, pass, o)
}

var errCrash = errors.New("simulated crash")

// faultDev is an in-memory device that stops writing after budget bytes: the write
// that crosses the budget lands up to the budget, rounded down to atom bytes (the
// device's atomic write unit), and every later write or sync fails. durable is
// what had been synced.
type faultDev struct {
	mu              sync.Mutex
	cur, durable    []byte
	budget, written int64
	atom            int64
	crashed         bool
	writes          []int64 // cumulative byte count at the start of each write
	offs            []int64 // device offset of each write
	dirty           [][2]int64
}

func newFaultDev(img []byte, budget, atom int64) *faultDev {
	return &faultDev{cur: bytes.Clone(img), durable: bytes.Clone(img), budget: budget, atom: atom}
}

func (d *faultDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.cur)) {
		return 0, errors.New("read beyond device")
	}
	return copy(p, d.cur[off:]), nil
}

func (d *faultDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return 0, errCrash
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.cur)) {
		return 0, errors.New("write beyond device")
	}
	d.writes = append(d.writes, d.written)
	d.offs = append(d.offs, off)
	n := int64(len(p))
	if d.budget >= 0 && d.written+n > d.budget {
		n = (d.budget - d.written) / d.atom * d.atom
		d.crashed = true
	}
	copy(d.cur[off:], p[:n])
	d.dirty = append(d.dirty, [2]int64{off, off + n})
	d.written += n
	if d.crashed {
		return int(n), errCrash
	}
	return int(n), nil
}

func (d *faultDev) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return errCrash
	}
	for _, r := range d.dirty {
		copy(d.durable[r[0]:r[1]], d.cur[r[0]:r[1]])
	}
	d.dirty = d.dirty[:0]
	return nil
}

// memVolume formats an image of size bytes (data at dataOff, sector size ss) with
// cryptsetup (pbkdf2, 1000 iterations for keyslot and digest, so that tests
// unlock fast) and passphrase pass, and fills its data with random plaintext under
// its key.
func memVolume(t testing.TB, size, dataOff int64, ss int, pass string) (img, plain, key []byte) {
	t.Helper()
	dir := t.TempDir()
	p, kf := filepath.Join(dir, "img"), filepath.Join(dir, "key")
	writeImage(t, p, make([]byte, size))
	writeImage(t, kf, []byte(pass))
	cryptsetup(t, "luksFormat", "--batch-mode", "--type", "luks2", "--sector-size", strconv.Itoa(ss), "--offset", strconv.FormatInt(dataOff/512, 10),
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", kf, p)
	img = readImage(t, p)
	key = dumpKey(t, p, kf)
	plain = make([]byte, size-dataOff)
	rand.Read(plain)
	copy(img[dataOff:], refXTS(t, key, ss, 0, plain, false))
	return img, plain, key
}

// memPlain decrypts the data of an in-memory image with the key its passphrase
// opens (through the reference XTS) and compares it with want.
func memPlain(t testing.TB, img []byte, pass string, want []byte) {
	t.Helper()
	d := newFaultDev(img, -1, 1)
	v, err := luks2.OpenDevice(d, int64(len(img)), luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Reencryption(); !errors.Is(err, luks2.ErrNotReencrypting) {
		t.Fatalf("still re-encrypting: %v", err)
	}
	vk, _, err := v.Unlock(context.Background(), []byte(pass))
	if err != nil {
		t.Fatal(err)
	}
	md := v.Metadata()
	got := refXTS(t, vk.Bytes(), md.SectorSize, md.IVTweak, img[md.DataOffset:], true)
	if !bytes.Equal(got, want) {
		t.Fatalf("plaintext differs at byte %d", firstDiff(got, want))
	}
}

var keyslotFast = luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}

func readImage(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeImage(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// dataWrite returns the budget that cuts the n-th write at or beyond dataOff (0
// based) after skip bytes.
func (d *faultDev) dataWrite(t testing.TB, dataOff int64, n int, skip int64) int64 {
	t.Helper()
	for i, o := range d.offs {
		if o >= dataOff {
			if n == 0 {
				return d.writes[i] + skip
			}
			n--
		}
	}
	t.Fatal("not that many data writes")
	return 0
}

// reencState returns the re-encryption state of an in-memory image.
func reencState(t testing.TB, img []byte) *luks2.Reencryption {
	t.Helper()
	v, err := luks2.OpenDevice(newFaultDev(img, -1, 1), int64(len(img)), luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	r, err := v.Reencryption()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func reencStateErr(img []byte) (*luks2.Reencryption, error) {
	v, err := luks2.OpenDevice(newFaultDev(img, -1, 1), int64(len(img)), luks2.ReadOnly)
	if err != nil {
		return nil, err
	}
	return v.Reencryption()
}

// unlockKey returns the key the passphrase opens on an in-memory image.
func unlockKey(t testing.TB, img []byte, pass string) []byte {
	t.Helper()
	v, err := luks2.OpenDevice(newFaultDev(img, -1, 1), int64(len(img)), luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	vk, _, err := v.Unlock(context.Background(), []byte(pass))
	if err != nil {
		t.Fatal(err)
	}
	defer vk.Wipe()
	return bytes.Clone(vk.Bytes())
}

// hashFile returns the sha256 of a file, streamed.
func hashFile(t testing.TB, p string) [32]byte {
	t.Helper()
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	h.Sum(s[:0])
	return s
}
