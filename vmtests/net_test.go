package vmtests

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestGuestFwd checks Machine.GuestFwd: the guest reaches a host service on 127.0.0.1
// through GuestAddr, once per connection (two connections in a row each get their
// own greeting), and nothing else (restrict=on: the host's 10.0.2.2 is unreachable).
func TestGuestFwd(t *testing.T) {
	e := setup(t)
	testpeer.Require(t, "socat") // QEMU runs socat once per forwarded connection
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			fmt.Fprintf(c, "hello %d\n", n)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	m := newMachine(t, e)
	m.GuestFwd = []GuestFwd{{GuestPort: 5696, HostPort: port}}
	b := boot(t, m, nil,
		Step{Name: "ip", Script: "ip addr show eth0"},
		Step{Name: "fwd", Script: "nc -w 10 " + GuestAddr + " 5696 </dev/null\nnc -w 10 " + GuestAddr + " 5696 </dev/null"},
		Step{Name: "restricted", Script: fmt.Sprintf("! nc -w 5 10.0.2.2 %d </dev/null", port)},
	)
	if r := ok(t, b, "ip"); !strings.Contains(string(r.Stdout), GuestIP+"/24") {
		t.Errorf("eth0 lacks %s: %s", GuestIP, r)
	}
	if r := ok(t, b, "fwd"); string(r.Stdout) != "hello 1\nhello 2\n" {
		t.Errorf("forwarded connections: %s", r)
	}
	ok(t, b, "restricted")
	if n := conns.Load(); n != 2 {
		t.Errorf("host saw %d connections; want 2", n)
	}
}
