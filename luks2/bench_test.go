package luks2

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

type benchKDF struct {
	name string
	kdf  KDFOptions
	args []string
}

var benchKDFs = []benchKDF{
	{"pbkdf2-sha256-i1000", KDFOptions{Type: KDFPBKDF2, Hash: "sha256", Iterations: 1000},
		[]string{"--pbkdf", "pbkdf2", "--hash", "sha256", "--pbkdf-force-iterations", "1000"}},
	{"argon2id-m65536-t4-p2", KDFOptions{Type: KDFArgon2id, Iterations: 4, MemoryKiB: 64 << 10, Parallel: 2},
		[]string{"--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "65536", "--pbkdf-parallel", "2"}},
	{"pbkdf2-sha256-i200000", KDFOptions{Type: KDFPBKDF2, Hash: "sha256", Iterations: 200000},
		[]string{"--pbkdf", "pbkdf2", "--hash", "sha256", "--pbkdf-force-iterations", "200000"}},
}

func report(b *testing.B, what string, ours, theirs time.Duration) {
	n := float64(b.N)
	o := float64(ours.Milliseconds()) / n
	c := float64(theirs.Milliseconds()) / n
	b.ReportMetric(o, "diskcryptd-ms/op")
	b.ReportMetric(c, "cryptsetup-ms/op")
	if c > 0 {
		b.ReportMetric(o/c, "ratio")
	}
	fmt.Printf("%-40s diskcryptd %8.1f ms  cryptsetup %8.1f ms  ratio %.2f\n", b.Name()+" "+what, o, c, o/c)
}

// BenchmarkFormat formats a 100 MiB image file with diskcryptd (FormatFile, in
// process) and with cryptsetup (luksFormat, a process), with the same forced KDF
// parameters (so neither benchmarks: both write a 1000-iteration digest).
func BenchmarkFormat(b *testing.B) {
	cs := needCryptsetup(b)
	ctx := context.Background()
	for _, bk := range benchKDFs {
		b.Run(bk.name, func(b *testing.B) {
			dir := b.TempDir()
			pass := []byte("benchmark passphrase")
			kf := writeKeyFile(b, dir, pass)
			var ours, theirs time.Duration
			for i := 0; i < b.N; i++ {
				img := newImage(b, dir, 100<<20)
				start := time.Now()
				v, vk, err := FormatFile(ctx, img, pass, &FormatOptions{Keyslot: KeyslotOptions{KDF: bk.kdf}, Force: true})
				if err != nil {
					b.Fatal(err)
				}
				ours += time.Since(start)
				vk.Wipe()
				v.Close()
				img2 := newImage(b, dir, 100<<20)
				args := append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", kf}, bk.args...)
				start = time.Now()
				if out, err := exec.Command(cs, append(args, img2)...).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				theirs += time.Since(start)
				os.Remove(img)
				os.Remove(img2)
			}
			report(b, "format", ours, theirs)
		})
	}
}

// BenchmarkOpen recovers the volume key from the same image with diskcryptd
// (OpenFile + Unlock) and with `cryptsetup open --test-passphrase`.
func BenchmarkOpen(b *testing.B) {
	cs := needCryptsetup(b)
	ctx := context.Background()
	for _, bk := range benchKDFs {
		b.Run(bk.name, func(b *testing.B) {
			dir := b.TempDir()
			pass := []byte("benchmark passphrase")
			kf := writeKeyFile(b, dir, pass)
			img := newImage(b, dir, 20<<20)
			v, vk, err := FormatFile(ctx, img, pass, &FormatOptions{Keyslot: KeyslotOptions{KDF: bk.kdf}})
			if err != nil {
				b.Fatal(err)
			}
			vk.Wipe()
			v.Close()
			b.ResetTimer()
			var ours, theirs time.Duration
			for i := 0; i < b.N; i++ {
				start := time.Now()
				v, err := OpenFile(img, ReadOnly)
				if err != nil {
					b.Fatal(err)
				}
				k, _, err := v.Unlock(ctx, pass)
				if err != nil {
					b.Fatal(err)
				}
				ours += time.Since(start)
				k.Wipe()
				v.Close()
				start = time.Now()
				if out, err := exec.Command(cs, "open", "--test-passphrase", "--key-file", kf, img).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				theirs += time.Since(start)
			}
			report(b, "open", ours, theirs)
		})
	}
}
