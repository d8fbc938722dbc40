// Package tpmtest starts software TPMs (swtpm) for tests.
package tpmtest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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
	return NewSwtpm(t).Spec
}

// Swtpm is a running swtpm whose state folder outlives restarts, so a restart is a
// reboot of the same machine: seeds and keys stay, PCRs start over.
type Swtpm struct {
	// Spec is the device spec, "swtpm:path=SOCKET".
	Spec string
	dir  string
	stop func()
}

// NewSwtpm starts a fresh swtpm; it is killed at test cleanup.
func NewSwtpm(t testing.TB) *Swtpm {
	t.Helper()
	RequirePeer(t, "swtpm")
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Swtpm{dir: dir}
	s.start(t)
	t.Cleanup(func() { s.stop() })
	return s
}

// Reboot stops the swtpm and starts it again on the same state.
func (s *Swtpm) Reboot(t testing.TB) {
	t.Helper()
	s.stop()
	s.start(t)
}

func (s *Swtpm) start(t testing.TB) {
	t.Helper()
	sock := filepath.Join(s.dir, "sock")
	_ = os.Remove(sock)
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+s.dir,
		"--ctrl", "type=unixio,path="+sock+".ctrl", // tpm2-tss's swtpm TCTI expects SOCK.ctrl
		"--server", "type=unixio,path="+sock,
		"--flags", "startup-clear")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-done
		})
	}
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
			s.stop()
			t.Fatalf("swtpm socket %s did not appear: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Spec = "swtpm:path=" + sock
}
