// Package kmiptest starts Debian's PyKMIP server (pykmip-server) on 127.0.0.1 for
// tests, with an ECDSA P-256 certificate authority, server and client certificates
// made with crypto/x509. Tests that use it need python3-pykmip: testpeer.Require
// decides between skipping and failing (under CI).
//
// The server runs under Debian's /usr/bin/python3 (the python3 first on PATH may be
// another interpreter without Debian's modules), in its own process group, with its
// SQLite database in the test's temporary folder. It ignores SIGTERM; Stop sends
// SIGINT to the group, then SIGKILL.
package kmiptest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// Python is Debian's interpreter, which has the pykmip module.
const Python = "/usr/bin/python3"

// ServerScript is the pykmip-server entry point Debian installs.
const ServerScript = "/usr/bin/pykmip-server"

// CA is a test certificate authority.
type CA struct {
	// Cert and Key are the CA's certificate and key.
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// CertFile is the CA certificate as a PEM file.
	CertFile string
	// ServerIPs are added to the IP addresses of server certificates it issues
	// (e.g. the address a QEMU guest reaches the host by).
	ServerIPs []net.IP
	dir       string
	serial    int64
	mu        sync.Mutex
}

// NewCA makes a CA named name whose files live in dir.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{Cert: cert, Key: key, dir: dir, serial: 1, CertFile: filepath.Join(dir, name+"-ca.pem")}
	writePEM(t, ca.CertFile, "CERTIFICATE", der, 0o644)
	return ca
}

func writePEM(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		t.Fatal(err)
	}
}

// Identity is a certificate and its key as PEM files.
type Identity struct {
	// CN is the certificate's common name (the client's identity at PyKMIP).
	CN                string
	CertFile, KeyFile string
	Key               *ecdsa.PrivateKey
}

// Issue makes a certificate for cn: a server certificate for IP 127.0.0.1 (and
// ca.ServerIPs) when server is true, else a client certificate (extended key usage clientAuth, which
// PyKMIP requires; the CN is the client's identity at the server).
func (ca *CA) Issue(t testing.TB, cn string, server bool) *Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return ca.IssueFor(t, cn, server, key)
}

// IssueFor is Issue for an existing key.
func (ca *CA) IssueFor(t testing.TB, cn string, server bool, key *ecdsa.PrivateKey) *Identity {
	t.Helper()
	id := &Identity{CN: cn, Key: key}
	id.CertFile = ca.IssuePublic(t, cn, server, &key.PublicKey)
	id.KeyFile = strings.TrimSuffix(id.CertFile, ".pem") + ".key"
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, id.KeyFile, "PRIVATE KEY", pk, 0o600)
	return id
}

// IssuePublic certifies pub (e.g. from a CSR whose key stays in a TPM) for cn and
// returns the certificate's PEM file.
func (ca *CA) IssuePublic(t testing.TB, cn string, server bool, pub crypto.PublicKey) string {
	t.Helper()
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = append([]net.IP{net.IPv4(127, 0, 0, 1)}, ca.ServerIPs...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(ca.dir, fmt.Sprintf("%s-%d.pem", cn, serial))
	writePEM(t, p, "CERTIFICATE", der, 0o644)
	return p
}

// Server is a running pykmip-server.
type Server struct {
	// Addr is 127.0.0.1:PORT.
	Addr string
	// CA signed the server's certificate and accepts clients it signed.
	CA *CA
	// Client is a client identity the server accepts.
	Client *Identity
	// Dir holds the configuration, database, certificates and log.
	Dir string
	// Log is the server's log file.
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Require skips the test (or fails it under CI) when pykmip-server cannot run here.
func Require(t testing.TB) {
	t.Helper()
	testpeer.Require(t, "pykmip-server")
	for _, f := range []string{Python, ServerScript} {
		if _, err := os.Stat(f); err != nil {
			testpeer.Missing(t, "%s: %v (apt-get install python3-pykmip)", f, err)
		}
	}
}

// Start starts a pykmip-server on a free port of 127.0.0.1 with a fresh CA, and stops
// it at the end of the test. Its certificate is valid for 127.0.0.1 and serverIPs.
func Start(t testing.TB, serverIPs ...net.IP) *Server {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	ca := NewCA(t, dir, "kms")
	ca.ServerIPs = serverIPs
	s := &Server{CA: ca, Dir: dir, Client: ca.Issue(t, "diskcryptd-host", false)}
	srv := ca.Issue(t, "kms-server", true)
	var err error
	for try := 0; try < 3; try++ {
		if err = s.start(srv); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("pykmip-server: %v", err)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start(srv *Identity) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	policies := filepath.Join(s.Dir, "policies")
	if err := os.MkdirAll(policies, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(s.Dir, "server.conf")
	s.Log = filepath.Join(s.Dir, "server.log")
	text := fmt.Sprintf(`[server]
hostname=127.0.0.1
port=%d
certificate_path=%s
key_path=%s
ca_path=%s
auth_suite=TLS1.2
policy_path=%s
enable_tls_client_auth=True
logging_level=INFO
database_path=%s
`, port, srv.CertFile, srv.KeyFile, s.CA.CertFile, policies, filepath.Join(s.Dir, "pykmip.db"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return err
	}
	_ = os.Remove(s.Log)
	cmd := exec.Command(Python, ServerScript, "-f", conf, "-l", s.Log)
	cmd.Dir = s.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group (setsid), so Stop reaches every thread and child; killed
	// with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			log, _ := os.ReadFile(s.Log)
			return fmt.Errorf("exited: %s\n%s", out.String(), tail(log))
		default:
		}
		if log, _ := os.ReadFile(s.Log); bytes.Contains(log, []byte("Starting connection service")) {
			if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
				c.Close()
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("not listening on %s after 60s", s.Addr)
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Stop stops the server: SIGINT to its process group, SIGKILL after 5 s. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	if os.Getenv("KMIPTEST_KEEP_LOG") != "" {
		if b, err := os.ReadFile(s.Log); err == nil {
			os.WriteFile(os.Getenv("KMIPTEST_KEEP_LOG"), b, 0o600)
		}
	}
	if s.cmd == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
	}
}

// Requests returns how many KMIP request messages the server has received, from
// its log.
func (s *Server) Requests() int {
	log, _ := os.ReadFile(s.Log)
	return bytes.Count(log, []byte("Received request at time"))
}

// DeadAddr returns a 127.0.0.1 address where nothing listens (a dead server).
func DeadAddr(t testing.TB) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
