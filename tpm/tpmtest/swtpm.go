// Package tpmtest starts software TPMs (swtpm) for tests.
package tpmtest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// RequirePeer is testpeer.Require: it skips the test when a named program is missing,
// or fails it under CI=true.
func RequirePeer(t testing.TB, names ...string) {
	t.Helper()
	testpeer.Require(t, names...)
}

// StartSwtpm starts a fresh swtpm (TPM 2.0, state in a temporary folder, already
// started up) and returns its device spec "swtpm:path=SOCKET". It is killed at test
// cleanup.
func StartSwtpm(t testing.TB) string {
	t.Helper()
	RequirePeer(t, "swtpm")
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+dir,
		"--ctrl", "type=unixio,path="+sock+".ctrl", // tpm2-tss's swtpm TCTI expects SOCK.ctrl
		"--server", "type=unixio,path="+sock,
		"--flags", "startup-clear")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("swtpm exited before its socket appeared")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm socket %s did not appear: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "swtpm:path=" + sock
}
