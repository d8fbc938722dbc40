// Package tangtest starts Debian's Tang server (tangd behind socat, as its systemd
// socket unit does) on 127.0.0.1 for tests, and rotates its keys.
package tangtest

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// Tangd is Debian's tangd.
const Tangd = "/usr/libexec/tangd"

// Server is one running Tang server.
type Server struct {
	// URL is http://127.0.0.1:PORT.
	URL string
	// Dir is the key database.
	Dir string

	t    testing.TB
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// Start creates a key database with tangd-keygen and serves it on a free port of
// 127.0.0.1 until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	testpeer.Require(t, "socat", Tangd, "/usr/libexec/tangd-keygen")
	dir := t.TempDir()
	if out, err := exec.Command("/usr/libexec/tangd-keygen", dir).CombinedOutput(); err != nil {
		t.Fatalf("tangd-keygen: %v: %s", err, out)
	}
	s := &Server{Dir: dir, t: t}
	s.Serve()
	t.Cleanup(s.Stop)
	return s
}

// Serve (re)starts serving the database, on the same port as before if it ran.
func (s *Server) Serve() {
	s.t.Helper()
	if s.port == 0 {
		s.port = freePort(s.t)
		s.URL = fmt.Sprintf("http://127.0.0.1:%d", s.port)
	}
	cmd := exec.Command("socat", fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork", s.port),
		"EXEC:"+Tangd+" "+s.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start socat: %v", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("tangd on port %d did not come up: %v", s.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Port returns the server's port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Stop kills the server's process group (socat and any tangd it forked).
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// Rotate runs tangd-rotate-keys: new keys are advertised, the old ones are hidden
// but still answer recoveries.
func (s *Server) Rotate() {
	s.t.Helper()
	if out, err := exec.Command("/usr/libexec/tangd-rotate-keys", "-d", s.Dir).CombinedOutput(); err != nil {
		s.t.Fatalf("tangd-rotate-keys: %v: %s", err, out)
	}
}

// SigningThumbprints returns the SHA-256 thumbprints of the advertised signing keys
// (tangd-keygen names each key file by it).
func (s *Server) SigningThumbprints() []string {
	s.t.Helper()
	files, err := filepath.Glob(filepath.Join(s.Dir, "*.jwk"))
	if err != nil {
		s.t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), ".") {
			continue // rotated out: no longer advertised
		}
		b, err := os.ReadFile(f)
		if err != nil {
			s.t.Fatal(err)
		}
		var k struct {
			Ops []string `json:"key_ops"`
		}
		if err := json.Unmarshal(b, &k); err != nil {
			s.t.Fatal(err)
		}
		if slices.Contains(k.Ops, "sign") {
			out = append(out, strings.TrimSuffix(filepath.Base(f), ".jwk"))
		}
	}
	return out
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
