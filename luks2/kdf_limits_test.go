package luks2

import (
	"context"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestPBKDF2MatchesStdlib checks our wipeable, cancellable PBKDF2 against the
// standard library's crypto/pbkdf2 (which takes the password as a string).
func TestPBKDF2MatchesStdlib(t *testing.T) {
	long := strings.Repeat("p", 200) // longer than every hash's block: hashed first
	for _, h := range []struct {
		name string
		f    func() hash.Hash
	}{{"sha1", sha1.New}, {"sha256", sha256.New}, {"sha512", sha512.New}} {
		for _, pw := range []string{"", "pw", long} {
			for _, iter := range []int{1, 2, 1000, pbkdf2CheckEvery + 3} {
				for _, n := range []int{16, 20, 32, 64, 100} {
					t.Run(fmt.Sprintf("%s/%d/%d/%d", h.name, len(pw), iter, n), func(t *testing.T) {
						want, err := pbkdf2.Key(h.f, pw, []byte("salt and pepper"), iter, n)
						if err != nil {
							t.Fatal(err)
						}
						got, err := pbkdf2Ctx(context.Background(), h.f, []byte(pw), []byte("salt and pepper"), iter, n)
						if err != nil || string(got) != string(want) {
							t.Fatalf("got %x, %v; want %x", got, err, want)
						}
					})
				}
			}
		}
	}
}

// hostileKDFImage formats an image with a cheap PBKDF2 keyslot and then rewrites the
// keyslot's KDF object with edit (checksums recomputed), as an attacker can.
func hostileKDFImage(t *testing.T, kdf KDFOptions, from, to string) (string, []byte) {
	t.Helper()
	img := newImage(t, t.TempDir(), 17<<20)
	pass := []byte("hostile kdf")
	opts := fastFormat()
	opts.Keyslot.KDF = kdf
	v, vk, err := FormatFile(context.Background(), img, pass, opts)
	if err != nil {
		t.Fatal(err)
	}
	vk.Wipe()
	v.Close()
	editHeaderJSON(t, img, func(js string) string {
		if !strings.Contains(js, from) {
			t.Fatalf("edit %q does not apply to %s", from, js)
		}
		return strings.Replace(js, from, to, 1)
	})
	return img, pass
}

// kdfGoroutines returns the stacks of goroutines that are running a KDF.
func kdfGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "luks2.pbkdf2") || strings.Contains(g, "luks2.deriveKey") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestCancelledPBKDF2StopsWork: a header asking for 4e9 PBKDF2-SHA512 iterations
// (within cryptsetup's limit; about an hour of CPU here) is unlocked with a context
// that is cancelled. Unlock returns context.Canceled, and no goroutine is left
// computing the KDF: the work stopped, it was not merely abandoned.
func TestCancelledPBKDF2StopsWork(t *testing.T) {
	img, pass := hostileKDFImage(t, MinimumCostKDF(), `"hash":"sha512","iterations":1000`, `"hash":"sha512","iterations":4000000000`)
	v, err := OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := v.Unlock(ctx, pass)
		done <- err
	}()
	// Cancel once the KDF is running.
	for kdfGoroutines() == "" {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	// The KDF left running would take an hour: fail with its stack long before
	// go test's own timeout kills every test (this is a liveness bound, not a
	// speed figure).
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Unlock = %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("Unlock still running 2 minutes after its context was cancelled:\n%s", kdfGoroutines())
	}
	// An abandoned computation would run for an hour; allow the scheduler a moment.
	for i := 0; ; i++ {
		s := kdfGoroutines()
		if s == "" {
			break
		}
		if i == 100 {
			t.Fatalf("KDF still running after Unlock returned:\n%s", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKDFLimits: keyslots whose KDF exceeds the limits are refused with ErrKDFCost
// before the KDF runs (a 4 GiB Argon2 with time cost 2^24 would otherwise take days).
func TestKDFLimits(t *testing.T) {
	def := DefaultKDFLimits()
	if def.MaxPBKDF2Iterations != 1<<32-1 || def.MaxArgon2MemoryKiB > 4<<20 || def.MaxArgon2MemoryKiB <= 0 {
		t.Fatalf("default limits %+v", def)
	}
	if runtime.GOOS == "linux" && def.MaxArgon2MemoryKiB > meminfoKiB("MemTotal:") {
		t.Fatalf("argon2 memory limit %d KiB above the machine's RAM", def.MaxArgon2MemoryKiB)
	}
	small := KDFLimits{MaxPBKDF2Iterations: 5000, MaxArgon2Time: 8, MaxArgon2MemoryKiB: 64 << 10, MaxArgon2Parallel: 4}
	for _, tc := range []struct {
		p  KDFParams
		ok bool
	}{
		{KDFParams{Type: KDFPBKDF2, Iterations: 5000}, true},
		{KDFParams{Type: KDFPBKDF2, Iterations: 5001}, false},
		{KDFParams{Type: KDFArgon2id, Time: 8, MemoryKiB: 64 << 10, Parallel: 4}, true},
		{KDFParams{Type: KDFArgon2id, Time: 9, MemoryKiB: 64 << 10, Parallel: 4}, false},
		{KDFParams{Type: KDFArgon2i, Time: 4, MemoryKiB: 64<<10 + 1, Parallel: 4}, false},
		{KDFParams{Type: KDFArgon2id, Time: 4, MemoryKiB: 1024, Parallel: 5}, false},
	} {
		if err := small.check(tc.p); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrKDFCost)) {
			t.Errorf("check(%+v) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}

	argon := KDFOptions{Type: KDFArgon2id, Iterations: 4, MemoryKiB: 1024, Parallel: 1}
	img, pass := hostileKDFImage(t, argon, `"time":4,"memory":1024,"cpus":1`, `"time":16777216,"memory":4194304,"cpus":4`)
	v, err := OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.SetKDFLimits(KDFLimits{MaxPBKDF2Iterations: 1 << 32, MaxArgon2Time: 1 << 24, MaxArgon2MemoryKiB: 1 << 20, MaxArgon2Parallel: 16})
	if _, _, err := v.Unlock(context.Background(), pass); !errors.Is(err, ErrKDFCost) {
		t.Fatalf("Unlock of a 4 GiB argon2 keyslot with 1 GiB available = %v, want ErrKDFCost", err)
	} else {
		t.Logf("refused: %v", err)
	}
	// The digest's iterations are bounded too.
	img, pass = hostileKDFImage(t, MinimumCostKDF(), `"hash":"sha256","iterations":1000`, `"hash":"sha256","iterations":4000000000`)
	v2, err := OpenFile(img, ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	v2.SetKDFLimits(small)
	if _, _, err := v2.Unlock(context.Background(), pass); !errors.Is(err, ErrKDFCost) {
		t.Fatalf("Unlock with a 4e9-iteration digest = %v, want ErrKDFCost", err)
	}
}
