package xts

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"testing"
)

// TestSpeedReport is `make bench-xts`: in one run it measures this package on one
// core and on all cores, golang.org/x/crypto/xts and `openssl speed -evp
// aes-256-xts -bytes 4096`, all AES-256-XTS with 4096-byte sectors, and prints MB/s
// with the ratios to OpenSSL. It runs only when XTS_SPEED_REPORT=1.
const speedRounds = 3

func TestSpeedReport(t *testing.T) {
	if os.Getenv("XTS_SPEED_REPORT") != "1" {
		t.Skip("set XTS_SPEED_REPORT=1 (make bench-xts) to measure")
	}
	mbps := func(f func(b *testing.B)) float64 {
		r := testing.Benchmark(f)
		return float64(r.Bytes) * float64(r.N) / r.T.Seconds() / 1e6
	}
	openssl := func() float64 {
		out, err := exec.Command("openssl", "speed", "-evp", "aes-256-xts", "-bytes", "4096", "-seconds", "1").Output()
		if err != nil {
			missingPeer(t, "openssl speed: %v", err)
		}
		m := regexp.MustCompile(`(?m)^AES-256-XTS\s+([0-9.]+)k\s*$`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("cannot parse openssl speed output:\n%s", out)
		}
		k, _ := strconv.ParseFloat(string(m[1]), 64)
		return k * 1000 / 1e6 // openssl counts in 1000s of bytes per second
	}
	im := defaultImplementation()
	type row struct {
		name    string
		measure func() float64
		mbps    float64
	}
	bench := func(f func(b *testing.B)) func() float64 { return func() float64 { return mbps(f) } }
	rows := []*row{
		{name: fmt.Sprintf("xts %s, 1 core, encrypt", im.name), measure: bench(func(b *testing.B) { benchmarkSectors(b, im, 64, 4096, 1<<20, false, false) })},
		{name: fmt.Sprintf("xts %s, 1 core, decrypt", im.name), measure: bench(func(b *testing.B) { benchmarkSectors(b, im, 64, 4096, 1<<20, true, false) })},
		{name: fmt.Sprintf("xts %s, %d cores (GOMAXPROCS), encrypt", im.name, runtime.GOMAXPROCS(0)), measure: bench(func(b *testing.B) { benchmarkSectors(b, im, 64, 4096, 16<<20, false, true) })},
	}
	for _, other := range implementations {
		if other != im && other.available && other != generic {
			rows = append(rows, &row{name: fmt.Sprintf("xts %s (not chosen), 1 core, encrypt", other.name), measure: bench(func(b *testing.B) { benchmarkSectors(b, other, 64, 4096, 1<<20, false, false) })})
		}
	}
	xc := &row{name: "golang.org/x/crypto/xts, 1 core, encrypt", measure: bench(func(b *testing.B) { benchmarkXCrypto(b, 4096, 1<<20) })}
	ossl := &row{name: "openssl speed -evp aes-256-xts -bytes 4096", measure: openssl}
	rows = append(rows, xc, ossl)

	// The machines are shared and noisy: measure everything speedRounds times,
	// alternating, and keep the best of each, so that all see the same conditions.
	for range speedRounds {
		for _, r := range rows {
			r.mbps = max(r.mbps, r.measure())
		}
	}
	one := rows[0].mbps

	fmt.Printf("\nAES-256-XTS (512-bit key), 4096-byte sectors, %s, %d CPUs\n", runtime.GOARCH, runtime.NumCPU())
	fmt.Printf("%-48s %12s %10s\n", "", "MB/s", "vs OpenSSL")
	for _, r := range rows {
		fmt.Printf("%-48s %12.0f %9.2fx\n", r.name, r.mbps, r.mbps/ossl.mbps)
	}
	// Ratios only: the design goals (1 core >= 1.5x OpenSSL, >= 20x x/crypto/xts) are
	// compared here, never asserted or judged; a shared machine cannot time them.
	fmt.Printf("\n1 core vs OpenSSL:        %.2fx (design goal 1.5x)\n", one/ossl.mbps)
	fmt.Printf("1 core vs x/crypto/xts:   %.1fx (design goal 20x)\n\n", one/xc.mbps)
}
