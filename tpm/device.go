package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultDevice is the kernel's TPM resource manager, used when a spec is empty or
// "auto".
const DefaultDevice = "/dev/tpmrm0"

// maxResponse bounds a TPM response (TPM_PT_MAX_RESPONSE_SIZE is far smaller).
const maxResponse = 64 << 10

// Open opens the TPM a spec names, in systemd's --tpm2-device syntax:
//
//   - "" or "auto": DefaultDevice;
//   - "swtpm:path=SOCKET": a software TPM's server socket (swtpm socket --server
//     type=unixio,path=SOCKET), which carries the plain TPM command stream;
//   - "device:PATH" or a path: a character device such as /dev/tpmrm0.
func Open(spec string) (transport.TPMCloser, error) {
	switch {
	case spec == "" || spec == "auto":
		return openDevice(DefaultDevice)
	case strings.HasPrefix(spec, "swtpm:"):
		path, err := swtpmPath(strings.TrimPrefix(spec, "swtpm:"))
		if err != nil {
			return nil, err
		}
		return openSocket(path)
	case strings.HasPrefix(spec, "device:"):
		return openDevice(strings.TrimPrefix(spec, "device:"))
	case strings.HasPrefix(spec, "/"):
		return openDevice(spec)
	default:
		return nil, fmt.Errorf("tpm: unknown TPM device %q (want a path, \"auto\" or \"swtpm:path=SOCKET\")", spec)
	}
}

// OpenContext is Open for a caller that can wait: a raw TPM device (/dev/tpm0) admits
// one process at a time and answers others EBUSY, so while ctx allows it the open is
// retried (parallel unlocks in serve, or systemd-cryptsetup holding the device).
func OpenContext(ctx context.Context, spec string) (transport.TPMCloser, error) {
	return retryBusy(ctx, func() (transport.TPMCloser, error) { return Open(spec) })
}

// retryBusy calls open until it returns something other than EBUSY or ctx is done.
func retryBusy(ctx context.Context, open func() (transport.TPMCloser, error)) (transport.TPMCloser, error) {
	for {
		t, err := open()
		if err == nil || !errors.Is(err, syscall.EBUSY) {
			return t, err
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func swtpmPath(conf string) (string, error) {
	for _, kv := range strings.Split(conf, ",") {
		if p, ok := strings.CutPrefix(kv, "path="); ok && p != "" {
			return p, nil
		}
	}
	return "", fmt.Errorf("tpm: swtpm device %q names no path=SOCKET", conf)
}

func openDevice(path string) (transport.TPMCloser, error) {
	// Open the character device in blocking mode: os.OpenFile would register it with
	// the runtime poller (non-blocking), and the kernel's TPM driver then answers a read
	// issued before a slow command completes with 0 bytes, which Go reports as EOF.
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tpm: open %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	return &streamTPM{rw: f, name: path, rm: isResourceManagerDevice(path)}, nil
}

func openSocket(path string) (transport.TPMCloser, error) {
	// swtpm serves one client at a time; its listen backlog refuses others briefly.
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.Dial("unix", path); err == nil || !errors.Is(err, syscall.EAGAIN) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm: connect to software TPM %s: %w", path, err)
	}
	return &streamTPM{rw: c, conn: c, name: path, stream: true}, nil
}

// streamTPM sends one command and reads one response. On a character device one read
// returns the whole response; on a socket the response is read by its header size.
type streamTPM struct {
	mu     sync.Mutex
	rw     io.ReadWriteCloser
	conn   net.Conn
	name   string
	stream bool
	// rm is set for a kernel resource manager (/dev/tpmrm0).
	rm bool
	// broken is set when a command on a socket was interrupted (deadline, cancel,
	// short read): the TPM's late answer would be read as the next command's, so
	// the connection takes no more commands.
	broken error
}

// Send implements transport.TPM.
func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return nil, fmt.Errorf("tpm: %s: connection unusable after an interrupted command: %w", s.name, s.broken)
	}
	rsp, err := s.send(cmd)
	if err != nil && s.stream {
		s.broken = err
	}
	return rsp, err
}

func (s *streamTPM) send(cmd []byte) ([]byte, error) {
	if _, err := s.rw.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpm: write to %s: %w", s.name, err)
	}
	if !s.stream {
		buf := make([]byte, maxResponse)
		n, err := s.rw.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("tpm: read from %s: %w", s.name, err)
		}
		return buf[:n], nil
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.rw, hdr); err != nil {
		return nil, fmt.Errorf("tpm: read from %s: %w", s.name, err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, fmt.Errorf("tpm: bad response size %d from %s", size, s.name)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.rw, rsp[10:]); err != nil {
		return nil, fmt.Errorf("tpm: read from %s: %w", s.name, err)
	}
	return rsp, nil
}

// Close implements transport.TPMCloser.
func (s *streamTPM) Close() error { return s.rw.Close() }

// setDeadline bounds socket I/O by the context's deadline.
func (s *streamTPM) setDeadline(t time.Time) {
	if s.conn != nil {
		_ = s.conn.SetDeadline(t)
	}
}

// ctxTPM checks its context before each command and bounds socket I/O by its deadline.
type ctxTPM struct {
	ctx context.Context
	t   transport.TPM
}

// WithContext returns a transport that refuses to send once ctx is done, bounds socket
// I/O by ctx's deadline and resends commands the TPM did not start (TPM_RC_RETRY,
// TPM_RC_YIELDED, TPM_RC_TESTING): for callers outside this package that execute
// go-tpm commands themselves.
func WithContext(ctx context.Context, t transport.TPM) transport.TPM { return withContext(ctx, t) }

// withContext returns a transport that refuses to send once ctx is done.
func withContext(ctx context.Context, t transport.TPM) transport.TPM {
	return ctxTPM{ctx: ctx, t: t}
}

// Send implements transport.TPM.
func (c ctxTPM) Send(cmd []byte) ([]byte, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	if s, ok := c.t.(*streamTPM); ok && s.conn != nil {
		if d, ok := c.ctx.Deadline(); ok {
			s.setDeadline(d)
		}
		// A cancel without a deadline (the losers of a race, an sss pin reaching its
		// threshold) must also end a wait for a TPM that does not answer.
		fired := make(chan struct{})
		stop := context.AfterFunc(c.ctx, func() { s.setDeadline(time.Now()); close(fired) })
		defer func() {
			if !stop() {
				<-fired
			}
			s.setDeadline(time.Time{})
		}()
	}
	for {
		rsp, err := c.t.Send(cmd)
		if err != nil && c.ctx.Err() != nil {
			return nil, errors.Join(err, c.ctx.Err())
		}
		if err != nil || len(rsp) < 10 || !retryable(binary.BigEndian.Uint32(rsp[6:10])) {
			return rsp, err
		}
		// TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING: the TPM did not start the
		// command; send it again (Part 2, 6.6.3).
		select {
		case <-c.ctx.Done():
			return nil, fmt.Errorf("tpm: %w", c.ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func retryable(rc uint32) bool {
	return rc == 0x922 || rc == 0x908 || rc == 0x90A
}
