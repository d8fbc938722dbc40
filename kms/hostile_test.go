package kms_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/kms/tpmkey"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// hostileServer is a TLS server under the test's control that speaks KMIP's TTLV
// through kmip-go's own message types, or raw bytes, as a compromised or broken key
// manager would. It verifies the client certificate like a real one, so the client
// reaches the KMIP exchange.
type hostileServer struct {
	addr string
	ca   *kmiptest.CA
	// client is an identity the server accepts.
	client *kmiptest.Identity
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

// serve runs handle on every accepted, handshaken connection until the test ends.
func startHostile(t *testing.T, handle func(c *tls.Conn), edit ...func(*kmiptest.CA, *tls.Config)) *hostileServer {
	t.Helper()
	dir := t.TempDir()
	ca := kmiptest.NewCA(t, dir, "hostile")
	srvID := ca.Issue(t, "hostile-kms", true)
	cert, err := tls.LoadX509KeyPair(srvID.CertFile, srvID.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
	for _, e := range edit {
		e(ca, cfg)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileServer{addr: ln.Addr().String(), ca: ca, client: ca.Issue(t, "host", false), ln: ln}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					return
				}
				handle(tc)
			}()
		}
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *hostileServer) stop() {
	h.ln.Close()
	h.mu.Lock()
	for _, c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// answer reads requests and writes respond's answer to each (DiscoverVersions is
// answered with KMIP 1.4 unless respond answers it).
func answer(respond func(req *kmip.RequestMessage) *kmip.ResponseMessage) func(c *tls.Conn) {
	return func(c *tls.Conn) {
		s := ttlv.NewStream(c, 1<<20)
		for {
			var req kmip.RequestMessage
			if err := s.Recv(&req); err != nil {
				return
			}
			resp := respond(&req)
			if resp == nil && req.BatchItem[0].Operation == kmip.OperationDiscoverVersions {
				resp = reply(&req, kmip.OperationDiscoverVersions, &payloads.DiscoverVersionsResponsePayload{ProtocolVersion: []kmip.ProtocolVersion{kmip.V1_4}})
			}
			if resp == nil {
				return
			}
			if err := s.Send(resp); err != nil {
				return
			}
		}
	}
}

// reply is a successful one-item response to req claiming operation op.
func reply(req *kmip.RequestMessage, op kmip.Operation, pl kmip.OperationPayload) *kmip.ResponseMessage {
	return &kmip.ResponseMessage{
		Header: kmip.ResponseHeader{ProtocolVersion: kmip.V1_4, TimeStamp: time.Now().Truncate(time.Second), BatchCount: 1},
		BatchItem: []kmip.ResponseBatchItem{{Operation: op, UniqueBatchItemID: req.BatchItem[0].UniqueBatchItemID,
			ResultStatus: kmip.ResultStatusSuccess, ResponsePayload: pl}},
	}
}

// on answers requests for operation op with f, and leaves the others to answer.
func on(op kmip.Operation, f func(req *kmip.RequestMessage) *kmip.ResponseMessage) func(*kmip.RequestMessage) *kmip.ResponseMessage {
	return func(req *kmip.RequestMessage) *kmip.ResponseMessage {
		if req.BatchItem[0].Operation == op {
			return f(req)
		}
		if req.BatchItem[0].Operation == kmip.OperationGetAttributes {
			return reply(req, kmip.OperationGetAttributes, &payloads.GetAttributesResponsePayload{UniqueIdentifier: "1",
				Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameState, AttributeValue: kmip.StateActive}}})
		}
		return nil
	}
}

func symKey(n int) *kmip.SymmetricKey {
	b := make([]byte, n)
	return &kmip.SymmetricKey{KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw,
		CryptographicAlgorithm: kmip.CryptographicAlgorithmAES, CryptographicLength: int32(8 * n),
		KeyValue: &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &b}}}}}
}

// hostileToken is a token of mode naming server.
func hostileToken(t *testing.T, mode, server string) unlock.Token {
	t.Helper()
	m := map[string]any{"type": kms.TokenType, "keyslots": []string{"1"}, "version": 1, "mode": mode,
		"servers": []string{server}, "kek_uid": "1"}
	if mode == kms.ModeWrap {
		m["algorithm"], m["aad"] = kms.AlgAES256GCM, kms.AADRecipe
		m["iv"], m["tag"], m["wrapped_secret"] = "AAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAA==", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	}
	js, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return unlock.Token{ID: 0, Type: kms.TokenType, Keyslots: []int{1}, JSON: js, VolumeUUID: testUUID}
}

// TestHostileServer: a key manager that answers with the wrong operation, a payload
// of the wrong type or size, no payload, garbage, a huge length, or nothing, gives a
// clear error naming the server within the deadline: no panic, no secret, no
// unbounded allocation, and no goroutine left behind.
func TestHostileServer(t *testing.T) {
	decryptData := func(n int) func(*kmip.RequestMessage) *kmip.ResponseMessage {
		return on(kmip.OperationDecrypt, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationDecrypt, &payloads.DecryptResponsePayload{UniqueIdentifier: "1", Data: make([]byte, n)})
		})
	}
	getObject := func(o kmip.Object) func(*kmip.RequestMessage) *kmip.ResponseMessage {
		return on(kmip.OperationGet, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationGet, &payloads.GetResponsePayload{ObjectType: o.ObjectType(), UniqueIdentifier: "1", Object: o})
		})
	}
	raw := func(b []byte) func(c *tls.Conn) {
		return func(c *tls.Conn) {
			var hdr [8]byte
			_, _ = c.Read(hdr[:]) // the start of the request
			_, _ = c.Write(b)
			time.Sleep(100 * time.Millisecond)
		}
	}
	garbage := make([]byte, 4096)
	_, _ = rand.Read(garbage)
	huge := []byte{0x42, 0x00, 0x7b, 0x01, 0x7f, 0xff, 0xff, 0xf0} // Response Message, structure, ~2 GiB
	cases := []struct {
		name   string
		mode   string
		handle func(c *tls.Conn)
		want   string // in the error
	}{
		{"decrypt answered with a get payload", kms.ModeWrap, answer(on(kmip.OperationDecrypt, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationGet, &payloads.GetResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: "1", Object: symKey(32)})
		})), "Get"},
		{"discover versions answered with a decrypt payload", kms.ModeWrap, answer(on(kmip.OperationDiscoverVersions, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationDecrypt, &payloads.DecryptResponsePayload{UniqueIdentifier: "1", Data: make([]byte, 32)})
		})), "Decrypt"},
		{"discover versions answers 2.1", kms.ModeWrap, answer(on(kmip.OperationDiscoverVersions, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationDiscoverVersions, &payloads.DiscoverVersionsResponsePayload{ProtocolVersion: []kmip.ProtocolVersion{kmip.V2_1}})
		})), "KMIP 2.1, which was not offered"},
		{"discover versions answers 1.0", kms.ModeWrap, answer(on(kmip.OperationDiscoverVersions, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationDiscoverVersions, &payloads.DiscoverVersionsResponsePayload{ProtocolVersion: []kmip.ProtocolVersion{kmip.V1_0}})
		})), "KMIP 1.0, which was not offered"},
		{"discover versions without payload", kms.ModeWrap, answer(on(kmip.OperationDiscoverVersions, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationDiscoverVersions, nil)
		})), "no response payload"},
		{"decrypt without payload", kms.ModeWrap, answer(on(kmip.OperationDecrypt, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			return reply(req, kmip.OperationDecrypt, nil)
		})), "no response payload"},
		{"decrypt returns 31 bytes", kms.ModeWrap, answer(decryptData(31)), "31 bytes"},
		{"decrypt returns 33 bytes", kms.ModeWrap, answer(decryptData(33)), "33 bytes"},
		{"decrypt returns nothing", kms.ModeWrap, answer(decryptData(0)), "0 bytes"},
		{"two batch items", kms.ModeWrap, answer(on(kmip.OperationDecrypt, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			r := reply(req, kmip.OperationDecrypt, &payloads.DecryptResponsePayload{UniqueIdentifier: "1", Data: make([]byte, 32)})
			r.BatchItem = append(r.BatchItem, r.BatchItem[0])
			r.Header.BatchCount = 2
			return r
		})), "2 batch items for 1"},
		{"get returns a 16-byte key", kms.ModeGet, answer(getObject(symKey(16))), "16 bytes"},
		{"get returns a 64-byte key", kms.ModeGet, answer(getObject(symKey(64))), "64 bytes"},
		{"get returns a certificate", kms.ModeGet, answer(getObject(&kmip.Certificate{CertificateType: kmip.CertificateTypeX_509, CertificateValue: []byte{1}})), "not secret data"},
		{"get returns a key without value", kms.ModeGet, answer(getObject(&kmip.SymmetricKey{KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw}})), "Empty key value"},
		{"get attributes answered with a get payload", kms.ModeGet, answer(func(req *kmip.RequestMessage) *kmip.ResponseMessage {
			if req.BatchItem[0].Operation == kmip.OperationGetAttributes {
				return reply(req, kmip.OperationGet, &payloads.GetResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: "1", Object: symKey(32)})
			}
			return nil
		}), "Get"},
		{"garbage", kms.ModeWrap, raw(garbage), ""},
		{"huge length", kms.ModeWrap, raw(huge), "too big"},
		{"closes at once", kms.ModeWrap, func(c *tls.Conn) {}, ""},
		{"never answers", kms.ModeWrap, func(c *tls.Conn) { _, _ = io.Copy(io.Discard, c) }, "deadline"},
	}
	before := runtime.NumGoroutine()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if raceEnabled && c.name == "closes at once" {
				// kmip-go v0.8.1 closes its send channel in the reader while the
				// sender may select on it (conn.terminate vs conn.send): a data race
				// in the library, turned into an error by Protector.run's recover.
				t.Skip("kmip-go v0.8.1 races on a connection closed under a request")
			}
			h := startHostile(t, c.handle)
			ident, err := kms.TLSFiles(h.ca.CertFile, h.client.CertFile, h.client.KeyFile, nil)
			if err != nil {
				t.Fatal(err)
			}
			// The attempt bound is longer than the token deadline: only ctx can end a
			// silent server's attempt.
			p, err := kms.New(kms.Config{Identity: ident, Timing: kms.Timing{Attempt: time.Minute, Rounds: 2, Backoff: 10 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				defer func() {
					if r := recover(); r != nil {
						done <- fmt.Errorf("PANIC: %v", r)
					}
				}()
				pass, err := p.Unseal(ctx, hostileToken(t, c.mode, h.addr))
				if err == nil {
					err = fmt.Errorf("unsealed: %q", pass)
				}
				done <- err
			}()
			var got error
			select {
			case got = <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("Unseal did not return long after its deadline")
			}
			t.Logf("%v", got)
			if strings.HasPrefix(got.Error(), "PANIC") || strings.HasPrefix(got.Error(), "unsealed") {
				t.Fatalf("hostile server: %v", got)
			}
			if !strings.Contains(got.Error(), h.addr) || !strings.Contains(got.Error(), c.want) {
				t.Errorf("error does not name the server and %q: %v", c.want, got)
			}
			var ke *kms.Error
			if !errors.As(got, &ke) {
				t.Errorf("not a *kms.Error: %v", got)
			}
		})
	}
	// Every connection, reader and writer goroutine of kmip-go is gone once the
	// servers stopped (the subtests' cleanups ran).
	var now int
	for range 100 {
		if now = runtime.NumGoroutine(); now <= before {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if now > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after:\n%s", before, now, buf[:runtime.Stack(buf, true)])
	}
}

// TestHostileTLS: the server must hold a certificate from --kmip-ca for the very
// host the token names (IP or name), and speak TLS 1.2 or later; otherwise the
// handshake fails, is classed "tls", and no KMIP request is sent.
func TestHostileTLS(t *testing.T) {
	otherName := func(ca *kmiptest.CA, cfg *tls.Config) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: "127.0.0.1"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.2")}, DNSNames: []string{"kms.example"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
	}
	tls11 := func(_ *kmiptest.CA, cfg *tls.Config) {
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	}
	var asked atomic.Bool
	handle := answer(func(*kmip.RequestMessage) *kmip.ResponseMessage { asked.Store(true); return nil })
	for _, c := range []struct {
		name string
		edit func(*kmiptest.CA, *tls.Config)
		host string // the token's host for the server
		want string
	}{
		{"certificate for another IP and name", otherName, "127.0.0.1", "certificate is valid for 127.0.0.2"},
		{"token names a host the certificate does not", nil, "localhost", "wanted to match localhost"},
		{"TLS 1.1 only", tls11, "127.0.0.1", "protocol version"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var edits []func(*kmiptest.CA, *tls.Config)
			if c.edit != nil {
				edits = append(edits, c.edit)
			}
			h := startHostile(t, handle, edits...)
			_, port, _ := net.SplitHostPort(h.addr)
			server := net.JoinHostPort(c.host, port)
			ident, err := kms.TLSFiles(h.ca.CertFile, h.client.CertFile, h.client.KeyFile, nil)
			if err != nil {
				t.Fatal(err)
			}
			p, err := kms.New(kms.Config{Identity: ident, Timing: kms.Timing{Attempt: 5 * time.Second, Rounds: 2, Backoff: 10 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Unseal(t.Context(), hostileToken(t, kms.ModeWrap, server))
			t.Logf("%v", err)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "TLS handshake") {
				t.Errorf("want a TLS failure saying %q: %v", c.want, err)
			}
			if asked.Load() {
				t.Errorf("a KMIP request reached a server that failed TLS verification")
			}
		})
	}
}

// stuckSigner is a client key whose Sign never returns (a TPM that does not answer);
// SignContext gives up when its context ends.
type stuckSigner struct {
	crypto.Signer
	release chan struct{}
}

func (s stuckSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	<-s.release
	return nil, errors.New("released")
}

func (s stuckSigner) SignContext(ctx context.Context, d []byte, o crypto.SignerOpts) ([]byte, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.release:
		return nil, errors.New("released")
	}
}

// TestStuckClientKey: a client key held by a TPM that does not answer costs at most
// the token deadline: the handshake's context reaches the signer.
func TestStuckClientKey(t *testing.T) {
	h := startHostile(t, answer(func(*kmip.RequestMessage) *kmip.ResponseMessage { return nil }))
	key, err := tls.LoadX509KeyPair(h.client.CertFile, h.client.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	ident, err := kms.TLSFiles(h.ca.CertFile, h.client.CertFile, "", stuckSigner{key.PrivateKey.(crypto.Signer), release})
	if err != nil {
		t.Fatal(err)
	}
	p, err := kms.New(kms.Config{Identity: ident, Timing: kms.Timing{Attempt: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.Unseal(ctx, hostileToken(t, kms.ModeWrap, h.addr))
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("%v", err)
		if err == nil || !strings.Contains(err.Error(), "deadline") {
			t.Errorf("want a deadline error: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Unseal hung in the client key's Sign far past its deadline")
	}
}

// A TPM-held client key gets the handshake's context.
var _ kms.ContextSigner = (*tpmkey.Signer)(nil)

// TestHostileResultMessage: a refusal's Result Message, written by the server, reaches
// errors (and so logs, the status socket and audit records) printable and bounded.
func TestHostileResultMessage(t *testing.T) {
	msg := "revoked\x1b[2J\nFAKE audit line " + strings.Repeat("x", 20000)
	h := startHostile(t, answer(on(kmip.OperationDecrypt, func(req *kmip.RequestMessage) *kmip.ResponseMessage {
		r := reply(req, kmip.OperationDecrypt, nil)
		r.BatchItem[0].ResultStatus, r.BatchItem[0].ResultReason, r.BatchItem[0].ResultMessage =
			kmip.ResultStatusOperationFailed, kmip.ResultReasonPermissionDenied, msg
		return r
	})))
	ident, err := kms.TLSFiles(h.ca.CertFile, h.client.CertFile, h.client.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := kms.New(kms.Config{Identity: ident})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Unseal(t.Context(), hostileToken(t, kms.ModeWrap, h.addr))
	if err == nil || !errors.Is(err, kms.ErrRefused) {
		t.Fatalf("want a refusal: %v", err)
	}
	t.Logf("%.300s", err)
	if strings.ContainsAny(err.Error(), "\x1b\n") || len(err.Error()) > 1000 || !strings.Contains(err.Error(), "revoked?[2J?FAKE") {
		t.Errorf("the server's message reached the error raw (%d bytes)", len(err.Error()))
	}
}

// TestDroppedConnectionsNotHammered: a server that closes every connection at once
// gets one connection per attempt (Timing.Rounds of them), not kmip-go's extra
// immediate reconnects.
func TestDroppedConnectionsNotHammered(t *testing.T) {
	if raceEnabled {
		t.Skip("kmip-go v0.8.1 races on a connection closed under a request")
	}
	var conns atomic.Int32
	h := startHostile(t, func(c *tls.Conn) { conns.Add(1) })
	ident, err := kms.TLSFiles(h.ca.CertFile, h.client.CertFile, h.client.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := kms.New(kms.Config{Identity: ident, Timing: kms.Timing{Rounds: 3, Backoff: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Unseal(t.Context(), hostileToken(t, kms.ModeWrap, h.addr))
	t.Logf("%d connections: %v", conns.Load(), err)
	if err == nil || conns.Load() != 3 {
		t.Errorf("%d connections for 3 attempts", conns.Load())
	}
}
