package tpm

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// hungTPM listens on a Unix socket like swtpm's server socket, reads one command and
// never answers. It returns the spec to open and a channel that receives once the
// command was read.
func hungTPM(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		if _, err := c.Read(buf); err == nil {
			read <- struct{}{}
		}
		<-done
	}()
	t.Cleanup(func() { close(done); l.Close() })
	return "swtpm:path=" + sock, read
}

// TestCancelEndsWaitForHungTPM: a TPM that takes a command and never answers holds
// a caller only until its context is cancelled, even without a deadline (the losers
// of a token race, the shares of an sss pin past its threshold). The interrupted
// connection then refuses further commands instead of reading the late answer as
// theirs.
func TestCancelEndsWaitForHungTPM(t *testing.T) {
	spec, read := hungTPM(t)
	tp, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := tpm2.GetRandom{BytesRequested: 8}.Execute(WithContext(ctx, tp))
		errc <- err
	}()
	<-read
	cancel()
	select {
	case err := <-errc:
		if err == nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled command: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled context did not end the wait for a TPM that never answers")
	}
	_, err = tpm2.GetRandom{BytesRequested: 8}.Execute(tp)
	if err == nil {
		t.Fatal("the interrupted connection took another command")
	}
	t.Logf("next command: %v", err)
}
