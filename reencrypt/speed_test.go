//go:build unix

package reencrypt

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestSpeedReport (make bench; REENCRYPT_SPEED_REPORT=1) times `diskcryptd
// reencrypt` against `cryptsetup reencrypt --force-offline-reencrypt` on the same
// 1 GiB image in /dev/shm (same KDF parameters, defaults otherwise), alternating,
// three rounds each, and prints the best wall and CPU times and their ratio.
func TestSpeedReport(t *testing.T) {
	if os.Getenv("REENCRYPT_SPEED_REPORT") == "" {
		t.Skip("set REENCRYPT_SPEED_REPORT=1 (make bench)")
	}
	cs := testpeer.Path(t, "cryptsetup")
	dir, err := os.MkdirTemp("/dev/shm", "reenc-bench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "diskcryptd")
	if out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "../cmd/diskcryptd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	master, img, kf := filepath.Join(dir, "master"), filepath.Join(dir, "img"), filepath.Join(dir, "key")
	writeImage(t, kf, []byte("bench passphrase"))
	writeImage(t, master, nil)
	os.Truncate(master, 1<<30)
	kdf := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	cryptsetup(t, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", kf}, kdf...), master)...)
	fh, _ := os.OpenFile(master, os.O_RDWR, 0)
	io.Copy(io.NewOffsetWriter(fh, 16<<20), io.LimitReader(rand.Reader, 1<<30-16<<20))
	fh.Close()
	tools := []struct {
		name string
		cmd  []string
	}{
		{"diskcryptd reencrypt", append(append([]string{bin, "reencrypt", "--key-file", kf}, kdf...), img)},
		{"cryptsetup reencrypt --force-offline-reencrypt", append(append([]string{cs, "reencrypt", "--force-offline-reencrypt", "--batch-mode", "--key-file", kf}, kdf...), img)},
	}
	best := make([][2]time.Duration, len(tools))
	for round := range 3 {
		for i, tool := range tools {
			writeImage(t, img, readImage(t, master))
			cmd := exec.Command(tool.cmd[0], tool.cmd[1:]...)
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", tool.name, err, out)
			}
			wall := time.Since(start)
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			if round == 0 || wall < best[i][0] {
				best[i][0] = wall
			}
			if round == 0 || cpu < best[i][1] {
				best[i][1] = cpu
			}
		}
	}
	fmt.Printf("1 GiB image on /dev/shm, best of 3 (wall / CPU):\n")
	for i, tool := range tools {
		fmt.Printf("  %-48s %7.2fs / %6.2fs\n", tool.name, best[i][0].Seconds(), best[i][1].Seconds())
	}
	fmt.Printf("  speed-up over cryptsetup: wall %.1fx, CPU %.1fx\n", best[1][0].Seconds()/best[0][0].Seconds(), best[1][1].Seconds()/best[0][1].Seconds())
}
