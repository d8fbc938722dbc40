package kms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/ttlv"
)

// Errors callers branch on.
var (
	// ErrUnreachable is wrapped when no server gave an answer (refused, timed out,
	// TLS failure) within the deadline.
	ErrUnreachable = errors.New("kms: no KMIP server answered")
	// ErrRefused is wrapped when a server answered and refused the operation (a KMIP
	// result failure such as a revoked, destroyed or unknown key).
	ErrRefused = errors.New("kms: KMIP server refused the operation")
	// ErrNotActive is wrapped when a get-mode object exists but is not in the Active
	// state (revoked, deactivated, destroyed): its secret is not released.
	ErrNotActive = errors.New("kms: KMIP object is not active")
)

// KMIPError is a KMIP result failure from a server (KMIP 1.4 §6.1.43–6.1.44).
type KMIPError struct {
	// Operation is the KMIP operation that failed.
	Operation kmip.Operation
	// Status and Reason are the Result Status and Result Reason.
	Status kmip.ResultStatus
	Reason kmip.ResultReason
	// Message is the server's Result Message.
	Message string
}

// Error implements error.
func (e *KMIPError) Error() string {
	msg := fmt.Sprintf("KMIP %s failed: %s", ttlv.EnumStr(e.Operation), ttlv.EnumStr(e.Reason))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Is makes errors.Is(err, ErrRefused) true for every KMIP result failure.
func (e *KMIPError) Is(target error) bool { return target == ErrRefused }

// ServerError is one failed attempt against one server.
type ServerError struct {
	// Server is HOST:PORT.
	Server string
	// Class is a short label of the failure ("refused", "timeout", "tls", "kmip", ...),
	// the result label of the requests metric.
	Class string
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *ServerError) Error() string { return fmt.Sprintf("kmip server %s: %v", e.Server, e.Err) }

// Unwrap returns the cause.
func (e *ServerError) Unwrap() error { return e.Err }

// Error is returned when an operation failed on every server: it lists the last
// failure of each. It wraps ErrRefused when a server answered with a refusal, else
// ErrUnreachable.
type Error struct {
	// Op is what was attempted ("decrypt", "get", ...).
	Op string
	// Servers has the last failure of each server, in the token's order.
	Servers []*ServerError
	// Attempts counts the requests made.
	Attempts int
}

// Error implements error.
func (e *Error) Error() string {
	parts := make([]string, len(e.Servers))
	for i, s := range e.Servers {
		parts[i] = s.Error()
	}
	return fmt.Sprintf("kms: %s failed after %d attempts: %s", e.Op, e.Attempts, strings.Join(parts, "; "))
}

// Unwrap exposes the per-server errors and ErrUnreachable when none answered.
func (e *Error) Unwrap() []error {
	out := make([]error, 0, len(e.Servers)+1)
	answered := false
	for _, s := range e.Servers {
		out = append(out, s)
		if errors.Is(s.Err, ErrRefused) || errors.Is(s.Err, ErrNotActive) {
			answered = true
		}
	}
	if !answered {
		out = append(out, ErrUnreachable)
	}
	return out
}

// TLSFiles loads the mutual-TLS identity from PEM files: the CA that signs the
// servers' certificates (and nothing else: the system roots are not trusted), the
// client certificate and its private key. signer, when not nil, is the private key
// instead of keyFile (a TPM-resident key).
func TLSFiles(caFile, certFile, keyFile string, signer crypto.Signer) (*TLSIdentity, error) {
	if caFile == "" || certFile == "" || (keyFile == "" && signer == nil) {
		return nil, errors.New("kms: mutual TLS needs --kmip-ca, --kmip-cert and --kmip-key")
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("kms: CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("kms: CA file %s holds no PEM certificate", caFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("kms: client certificate: %w", err)
	}
	var cert tls.Certificate
	if signer == nil {
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("kms: client key: %w", err)
		}
		cert, err = tls.X509KeyPair(certPEM, keyPEM)
		clear(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("kms: client certificate and key: %w", err)
		}
	} else {
		for rest := certPEM; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				cert.Certificate = append(cert.Certificate, b.Bytes)
			}
		}
		if len(cert.Certificate) == 0 {
			return nil, fmt.Errorf("kms: %s holds no PEM certificate", certFile)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("kms: client certificate: %w", err)
		}
		if !publicKeysEqual(leaf.PublicKey, signer.Public()) {
			return nil, errors.New("kms: the client certificate is not for this key")
		}
		cert.PrivateKey = signer
	}
	return &TLSIdentity{Roots: pool, Cert: cert}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// TLSIdentity is the client side of mutual TLS.
type TLSIdentity struct {
	// Roots verify the server's certificate (its IP or name must match the address).
	Roots *x509.CertPool
	// Cert is the client certificate, the host's identity to the KMS.
	Cert tls.Certificate
}

// config returns the TLS configuration for server (HOST:PORT): TLS 1.2 at least,
// the server verified against Roots for its host name or IP.
func (id *TLSIdentity) config(server string) *tls.Config {
	host, _, _ := net.SplitHostPort(server)
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      id.Roots,
		Certificates: []tls.Certificate{id.Cert},
		ServerName:   host,
	}
	if cs, ok := id.Cert.PrivateKey.(ContextSigner); ok {
		// crypto/tls calls Sign without a context; a TPM-held key gets the
		// handshake's, so a TPM that does not answer cannot outlive the deadline.
		cfg.Certificates = nil
		cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := id.Cert
			c.PrivateKey = ctxSigner{cs, cri.Context()}
			return &c, nil
		}
	}
	return cfg
}

// ContextSigner is a crypto.Signer whose signature can be bounded by a context (a
// TPM-held key, tpmkey.Signer): the TLS handshake's context bounds it.
type ContextSigner interface {
	crypto.Signer
	SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// ctxSigner is a ContextSigner bound to one handshake's context.
type ctxSigner struct {
	s   ContextSigner
	ctx context.Context
}

func (c ctxSigner) Public() crypto.PublicKey { return c.s.Public() }
func (c ctxSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return c.s.SignContext(c.ctx, digest, opts)
}

// Timing bounds the network work of one operation.
type Timing struct {
	// Attempt bounds one attempt against one server: connect, TLS handshake, version
	// negotiation and the response (default 5s).
	Attempt time.Duration
	// Connect bounds the TCP connect within an attempt (default 3s, at most Attempt),
	// so a server whose SYNs go unanswered leaves time for the next one.
	Connect time.Duration
	// Rounds is how many times the server list is walked (default 4).
	Rounds int
	// Backoff is the base delay before the second round; it doubles each round up to
	// MaxBackoff, and each delay is drawn uniformly from [0, delay] (full jitter) so
	// hosts that all rebooted at once spread out (defaults 250ms and 4s).
	Backoff, MaxBackoff time.Duration
}

func (t Timing) withDefaults() Timing {
	if t.Attempt <= 0 {
		t.Attempt = 5 * time.Second
	}
	if t.Connect <= 0 || t.Connect > t.Attempt {
		t.Connect = min(3*time.Second, t.Attempt)
	}
	if t.Rounds <= 0 {
		t.Rounds = 4
	}
	if t.Backoff <= 0 {
		t.Backoff = 250 * time.Millisecond
	}
	if t.MaxBackoff <= 0 {
		t.MaxBackoff = 4 * time.Second
	}
	return t
}

// kmipVersions are the KMIP versions offered, most preferred first.
var kmipVersions = []kmip.ProtocolVersion{kmip.V1_4, kmip.V1_3, kmip.V1_2}

// session is one connected, version-negotiated client.
type session struct {
	c      *kmipclient.Client
	server string
}

// dial connects to server: TCP connect, TLS handshake (mutual) and KMIP version
// negotiation, all bounded by ctx.
func (p *Protector) dial(ctx context.Context, server string) (*session, error) {
	cfg := p.id.config(server)
	dialed := false
	dialer := func(ctx context.Context) (net.Conn, error) {
		// One connection per attempt: kmip-go reconnects up to three times, without
		// delay, when a server closes the connection; the retry policy (rounds,
		// backoff with jitter) is run's alone, so a server that drops every
		// connection is not hammered.
		if dialed {
			// Not an error: kmip-go v0.8.1 then leaves its client without a
			// connection, and its Close dereferences nil. A connection that reads
			// as closed ends the request with errDropped instead.
			return newDroppedConn(), nil
		}
		dialed = true
		nd := net.Dialer{Timeout: p.cfg.Timing.Connect}
		raw, err := nd.DialContext(ctx, "tcp", server)
		if err != nil {
			return nil, err
		}
		return handshake(ctx, raw, cfg)
	}
	opts := []kmipclient.Option{
		kmipclient.WithDialerUnsafe(dialer),
		kmipclient.WithMiddlewares(noTimeStamp, checkResponse),
		kmipclient.WithKmipVersions(kmipVersions...),
		kmipclient.WithMaxMessageSize(64 << 10),
	}
	// The version a server negotiated once is reused: one round trip (DiscoverVersions)
	// less for every later volume.
	if v, ok := p.versions.Load(server); ok {
		opts = append(opts, kmipclient.EnforceVersion(v.(kmip.ProtocolVersion)))
	}
	c, err := kmipclient.DialContext(ctx, server, opts...)
	if err != nil {
		return nil, err
	}
	// kmip-go takes the server's first version as it comes; only one we offered
	// is spoken (1.0 and 1.1 lack Encrypt/Decrypt, 2.x encodes attributes anew).
	if v := c.Version(); !slices.Contains(kmipVersions, v) {
		c.Close()
		return nil, fmt.Errorf("%w: the server chose KMIP %d.%d, which was not offered", ErrBadResponse, v.ProtocolVersionMajor, v.ProtocolVersionMinor)
	}
	p.versions.Store(server, c.Version())
	return &session{c: c, server: server}, nil
}

// noTimeStamp drops the optional Time Stamp of the request header (KMIP 1.4 §7.2):
// a host at boot has not synchronised its clock yet, and servers reject stamps they
// find in the future or more than a minute old (PyKMIP does; a TCG guest's clock runs
// ahead of the host's within seconds). Replays are TLS's business.
func noTimeStamp(next kmipclient.Next, ctx context.Context, msg *kmip.RequestMessage) (*kmip.ResponseMessage, error) {
	msg.Header.TimeStamp = nil
	return next(ctx, msg)
}

// ErrBadResponse is wrapped when a server's response does not answer the request:
// another operation, no payload, a payload of another type, another batch size.
var ErrBadResponse = errors.New("kms: KMIP response does not answer the request")

// checkResponse refuses a response that does not answer msg item for item: a
// successful item must name the request's operation and carry that operation's
// response payload. kmip-go decodes a payload by the operation the server names and
// asserts its type without checking (its version negotiation included): without this
// check, a broken or hostile server could panic the daemon at boot.
func checkResponse(next kmipclient.Next, ctx context.Context, msg *kmip.RequestMessage) (*kmip.ResponseMessage, error) {
	resp, err := next(ctx, msg)
	if err != nil {
		return nil, err
	}
	if len(resp.BatchItem) != len(msg.BatchItem) || int(resp.Header.BatchCount) != len(resp.BatchItem) {
		return nil, fmt.Errorf("%w: %d batch items for %d", ErrBadResponse, len(resp.BatchItem), len(msg.BatchItem))
	}
	for i, bi := range resp.BatchItem {
		want := msg.BatchItem[i].Operation
		if bi.Operation != 0 && bi.Operation != want {
			return nil, fmt.Errorf("%w: KMIP %s answered as %s", ErrBadResponse, ttlv.EnumStr(want), ttlv.EnumStr(bi.Operation))
		}
		if bi.ResultStatus != kmip.ResultStatusSuccess {
			continue
		}
		if bi.ResponsePayload == nil {
			return nil, fmt.Errorf("%w: KMIP %s succeeded with no response payload", ErrBadResponse, ttlv.EnumStr(want))
		}
		if got := bi.ResponsePayload.Operation(); got != want {
			return nil, fmt.Errorf("%w: KMIP %s answered with a %s payload", ErrBadResponse, ttlv.EnumStr(want), ttlv.EnumStr(got))
		}
	}
	return resp, nil
}

// payloadAs returns the response payload pl as a T, or an error (never a panic).
func payloadAs[T kmip.OperationPayload](pl kmip.OperationPayload) (T, error) {
	v, ok := pl.(T)
	if !ok {
		return v, fmt.Errorf("%w: a %T payload", ErrBadResponse, pl)
	}
	return v, nil
}

func handshake(ctx context.Context, raw net.Conn, cfg *tls.Config) (net.Conn, error) {
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &tlsError{err}
	}
	return &closeOnWriteError{Conn: tc}, nil
}

// errDropped ends a request whose connection the server closed.
var errDropped = errors.New("the server closed the connection")

// droppedConn is what kmip-go gets when it tries to reconnect within an attempt: it
// reads errDropped and discards writes, touching no network.
type droppedConn struct{ net.Conn }

func newDroppedConn() *droppedConn {
	a, b := net.Pipe()
	b.Close()
	return &droppedConn{a}
}

func (*droppedConn) Read([]byte) (int, error)    { return 0, errDropped }
func (*droppedConn) Write(b []byte) (int, error) { return len(b), nil }

// closeOnWriteError turns a failed write into a closed connection and a write that
// "succeeded": kmip-go v0.8.1's writer goroutine reports a write error on a channel
// nobody may be listening on any more (the reader already saw the connection end),
// and then blocks forever, one leaked goroutine per broken connection. Closed, the
// connection fails the reader instead, which ends the request with an error.
type closeOnWriteError struct{ net.Conn }

func (c *closeOnWriteError) Write(b []byte) (int, error) {
	if _, err := c.Conn.Write(b); err != nil {
		_ = c.Conn.Close()
	}
	return len(b), nil
}

// tlsError marks a failed TLS handshake.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// request sends one operation with a fresh random Unique Batch Item ID (KMIP 1.4
// §6.1.11; servers echo it in the response and may log it) as the correlation value
// of the audit record, and turns a result failure into a *KMIPError. (The KMIP 1.4
// Client Correlation Value header field would fit better, but PyKMIP 0.10 rejects
// a request header that carries it.)
func (s *session) request(ctx context.Context, payload kmip.OperationPayload) (kmip.OperationPayload, string, error) {
	var cv [8]byte
	_, _ = rand.Read(cv[:])
	corr := hex.EncodeToString(cv[:])
	res, err := s.c.BatchOpt(ctx, []kmip.OperationPayload{payload}, func(m *kmip.RequestMessage) {
		m.BatchItem[0].UniqueBatchItemID = cv[:]
	})
	if err != nil {
		return nil, corr, err
	}
	bi := res[0]
	if len(bi.UniqueBatchItemID) > 0 && !bytes.Equal(bi.UniqueBatchItemID, cv[:]) {
		return nil, corr, fmt.Errorf("KMIP %s: response for batch item %.16x, not ours", ttlv.EnumStr(payload.Operation()), bi.UniqueBatchItemID)
	}
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		return nil, corr, &KMIPError{Operation: payload.Operation(), Status: bi.ResultStatus, Reason: bi.ResultReason, Message: serverText(bi.ResultMessage)}
	}
	if bi.ResponsePayload == nil {
		return nil, corr, fmt.Errorf("KMIP %s: empty response", ttlv.EnumStr(payload.Operation()))
	}
	return bi.ResponsePayload, corr, nil
}

// maxServerText bounds the server-written text an error carries.
const maxServerText = 200

// serverText makes a server's Result Message safe to print in errors, logs, the
// status socket and audit records: printable characters only (others become '?'),
// at most maxServerText bytes.
func serverText(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= maxServerText {
			b.WriteString("...")
			break
		}
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// classify names the failure for metrics and decides whether another attempt may
// help: a server's KMIP answer is final for that server.
func classify(ctx context.Context, err error) (class string, final bool) {
	var ke *KMIPError
	var te *tlsError
	var ne net.Error
	switch {
	case errors.As(err, &ke), errors.Is(err, ErrNotActive):
		return "kmip_error", true
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout", false
	case errors.As(err, &te):
		// A certificate the server or we reject stays rejected: final for that server.
		// (A TLS alert carries no type to test; its text names the certificate.)
		var ce *tls.CertificateVerificationError
		var oe *net.OpError
		if errors.As(err, &ce) || (errors.As(err, &oe) && oe.Op == "remote error" && strings.Contains(oe.Err.Error(), "certificate")) {
			return "tls", true
		}
		return "tls", false
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", false
	}
	return "error", false
}

// attemptResult is what one successful operation tells the audit record.
type attemptResult struct {
	server, corr string
}

// run performs op against servers with the protector's timing: each attempt bounded
// by Timing.Attempt, rounds separated by jittered exponential backoff, all within
// ctx. It returns the server and correlation value of the success, or an *Error.
func (p *Protector) run(ctx context.Context, opName string, servers []string, op func(ctx context.Context, s *session) (string, error)) (attemptResult, error) {
	tm := p.cfg.Timing
	last := make([]*ServerError, len(servers))
	final := make([]bool, len(servers))
	attempts := 0
	for round := 0; round < tm.Rounds; round++ {
		if round > 0 {
			d := min(tm.Backoff<<(round-1), tm.MaxBackoff)
			n, _ := rand.Int(rand.Reader, big.NewInt(int64(d)+1))
			t := time.NewTimer(time.Duration(n.Int64()))
			select {
			case <-ctx.Done():
				t.Stop()
				return attemptResult{}, p.fail(opName, servers, last, attempts, ctx.Err())
			case <-t.C:
			}
		}
		allFinal := true
		for i, srv := range servers {
			if final[i] {
				continue
			}
			if ctx.Err() != nil {
				return attemptResult{}, p.fail(opName, servers, last, attempts, ctx.Err())
			}
			release, err := p.acquire(ctx, srv)
			if err != nil {
				return attemptResult{}, p.fail(opName, servers, last, attempts, err)
			}
			attempts++
			actx, cancel := context.WithTimeout(ctx, tm.Attempt)
			start := time.Now()
			corr, err := func() (corr string, err error) {
				// kmip-go v0.8.1 can panic in the caller's goroutine when a server
				// drops the connection mid-request (its sender races the reader's
				// close of the send channel): one server's failure, not the daemon's.
				defer func() {
					if r := recover(); r != nil {
						corr, err = "", fmt.Errorf("%w: KMIP client failed on this connection: %v", ErrBadResponse, r)
					}
				}()
				s, err := p.dial(actx, srv)
				if err != nil {
					return "", err
				}
				defer s.c.Close()
				return op(actx, s)
			}()
			timedOut := errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
			cancel()
			release()
			if err == nil {
				p.metrics.observe(srv, "ok", time.Since(start))
				return attemptResult{server: srv, corr: corr}, nil
			}
			switch {
			case timedOut:
				err = fmt.Errorf("no answer within %s: %w", tm.Attempt, err)
			case ctx.Err() != nil:
				err = fmt.Errorf("cut at the token deadline: %w", err)
			}
			class, fin := classify(actx, err)
			p.metrics.observe(srv, class, time.Since(start))
			last[i] = &ServerError{Server: srv, Class: class, Err: err}
			final[i] = fin
			if !fin {
				allFinal = false
			}
			p.log.Debug("KMIP attempt failed", "op", opName, "server", srv, "round", round+1, "class", class, "error", err)
		}
		if allFinal {
			break
		}
	}
	return attemptResult{}, p.fail(opName, servers, last, attempts, nil)
}

// acquire waits, within ctx, for one of the protector's connection slots to server
// (Config.MaxConnections): one host's parallel unlocks do not flood a server's
// accept queue (PyKMIP listens with a backlog of 5; beyond it connections wait for a
// SYN retransmission, a second or more).
func (p *Protector) acquire(ctx context.Context, server string) (func(), error) {
	v, _ := p.slots.LoadOrStore(server, make(chan struct{}, p.cfg.MaxConnections))
	sem := v.(chan struct{})
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *Protector) fail(op string, servers []string, last []*ServerError, attempts int, ctxErr error) error {
	e := &Error{Op: op, Attempts: attempts}
	for i, s := range last {
		if s == nil {
			why := errors.New("not tried")
			if ctxErr != nil {
				why = fmt.Errorf("not tried before the deadline: %w", ctxErr)
			}
			s = &ServerError{Server: servers[i], Class: "skipped", Err: why}
		}
		e.Servers = append(e.Servers, s)
	}
	return e
}
