package systemd

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadyOverSocket listens on a real unixgram NOTIFY_SOCKET, as systemd does, and
// checks the datagram Ready sends.
func TestReadyOverSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	var n Notifier
	if err := n.Ready("2 volumes unlocked"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	k, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := string(buf[:k])
	if !strings.Contains(got, "READY=1") || !strings.Contains(got, "STATUS=2 volumes unlocked") {
		t.Fatalf("notify datagram = %q", got)
	}
}

func TestNoSocketIsNoop(t *testing.T) {
	os.Unsetenv("NOTIFY_SOCKET")
	var n Notifier
	for _, f := range []func() error{func() error { return n.Ready("x") }, func() error { return n.Status("y") }, n.Stopping} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
}
