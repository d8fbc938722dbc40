package luks2

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// needCryptsetup returns the cryptsetup binary, skipping the test when it is missing,
// except under CI=true where a missing peer is a failure.
func needCryptsetup(t testing.TB) string {
	t.Helper()
	return testpeer.Path(t, "cryptsetup")
}

func needTool(t testing.TB, name string) string {
	t.Helper()
	return testpeer.Path(t, name)
}

// run runs a command and fails the test when it fails.
func run(t testing.TB, stdin []byte, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newImage creates a sparse image file of size bytes.
func newImage(t testing.TB, dir string, size int64) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "img-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name()
}

func writeKeyFile(t testing.TB, dir string, b []byte) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "key-*")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(b)
	f.Close()
	return f.Name()
}

// jsonEqual reports whether two JSON texts are equivalent.
func jsonEqual(t testing.TB, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("bad JSON %q: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("bad JSON %q: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

// fastFormat are cheap format options for tests.
func fastFormat() *FormatOptions {
	return &FormatOptions{Keyslot: KeyslotOptions{KDF: MinimumCostKDF()}, digestIterations: 1000}
}

var errCrash = errors.New("simulated crash")

// memDev is an in-memory Device. With a byte budget it simulates a crash: the write
// that crosses the budget is applied partially and every later write or sync fails.
// It keeps what was synced apart from what was only written, so a test can check the
// image with and without the unsynced writes.
type memDev struct {
	mu      sync.Mutex
	cur     []byte // every write applied
	durable []byte // only synced writes applied
	pending []pendingWrite
	budget  int64 // -1: unlimited
	written int64
	crashed bool
	bounds  []int64    // cumulative byte counts at each write's start
	writes  []writeRec // every write attempted: device offset and length
}

type writeRec struct {
	off int64
	n   int
}

type pendingWrite struct {
	off int64
	b   []byte
}

func newMemDev(img []byte, budget int64) *memDev {
	return &memDev{cur: bytes.Clone(img), durable: bytes.Clone(img), budget: budget}
}

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off >= int64(len(d.cur)) {
		return 0, errors.New("read beyond device")
	}
	n := copy(p, d.cur[off:])
	if n < len(p) {
		return n, errors.New("short read")
	}
	return n, nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return 0, errCrash
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.cur)) {
		return 0, errors.New("write beyond device")
	}
	d.bounds = append(d.bounds, d.written)
	d.writes = append(d.writes, writeRec{off, len(p)})
	n := int64(len(p))
	if d.budget >= 0 && d.written+n > d.budget {
		n = d.budget - d.written
		d.crashed = true
	}
	copy(d.cur[off:], p[:n])
	d.pending = append(d.pending, pendingWrite{off, bytes.Clone(p[:n])})
	d.written += n
	if d.crashed {
		return int(n), errCrash
	}
	return int(n), nil
}

func (d *memDev) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return errCrash
	}
	for _, w := range d.pending {
		copy(d.durable[w.off:], w.b)
	}
	d.pending = nil
	return nil
}

// memFormat returns a small formatted image in memory with passphrase pass.
func memFormat(t testing.TB, size int64, pass string, opts *FormatOptions) []byte {
	t.Helper()
	d := newMemDev(make([]byte, size), -1)
	if opts == nil {
		opts = fastFormat()
	}
	v, vk, err := Format(context.Background(), d, size, []byte(pass), opts)
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	_ = v
	return d.cur
}

func writeImage(t testing.TB, dir string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, "mem.img")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
