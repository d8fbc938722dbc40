package vmtests

import (
	"bytes"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
)

// kmsTLSFlags point the guest's diskcryptd at the TLS files startKMS returns.
const kmsTLSFlags = "--kmip-ca /etc/kmip/ca.pem --kmip-cert /etc/kmip/client.pem --kmip-key /etc/kmip/client.key"

// startKMS starts pykmip-server on the host and returns it, its address as the guest
// sees it at guestPort, the forward that takes the guest there, and the boot files of
// the client's TLS identity (/etc/kmip/{ca.pem,client.pem,client.key}).
func startKMS(t *testing.T, guestPort int) (*kmiptest.Server, string, GuestFwd, map[string][]byte) {
	t.Helper()
	testpeer.Require(t, "socat")
	srv := kmiptest.Start(t, net.ParseIP(GuestAddr))
	_, portText, _ := net.SplitHostPort(srv.Addr)
	hostPort, _ := strconv.Atoi(portText)
	files := map[string][]byte{}
	for guest, host := range map[string]string{"/etc/kmip/ca.pem": srv.CA.CertFile, "/etc/kmip/client.pem": srv.Client.CertFile, "/etc/kmip/client.key": srv.Client.KeyFile} {
		b, err := os.ReadFile(host)
		if err != nil {
			t.Fatal(err)
		}
		files[guest] = b
	}
	return srv, net.JoinHostPort(GuestAddr, strconv.Itoa(guestPort)), GuestFwd{GuestPort: guestPort, HostPort: hostPort}, files
}

// TestKMIPBoot: a guest whose only way out is a guestfwd to the host's pykmip-server
// (user networking, restrict=on) enrolls a KMIP protector; on the next boot
// "serve --once" unlocks the volume through the KMS alone (no passphrase file, no TPM
// token) and the data reads back; after the KEK is revoked in the KMS, the next boot
// leaves the volume locked and says why.
func TestKMIPBoot(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	srv, server, fwd, tlsFiles := startKMS(t, 5696)

	f := newFixture(t, e)
	f.m.GuestFwd = []GuestFwd{fwd}
	tlsFlags := " " + kmsTLSFlags + " "
	files := f.files()
	for k, v := range tlsFiles {
		files[k] = v
	}
	b1 := boot(t, f.m, files,
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "enroll", Script: "diskcryptd enroll kmip --key-file " + passFile + " --kmip-server " + server + tlsFlags + "$(disk data0)"},
		Step{Name: "list", Script: "diskcryptd token list $(disk data0)"},
		Step{Name: "unlock", Script: "diskcryptd unlock --key-file " + passFile + " $(disk data0) data"},
		stepWrite("data"),
		Step{Name: "lock", Script: "diskcryptd lock data"},
	)
	for _, s := range []string{"format", "enroll", "list", "unlock", "write", "lock"} {
		ok(t, b1, s)
	}
	if !strings.Contains(string(b1.Result("list").Stdout), kms.TokenType) {
		t.Errorf("token list lacks the KMIP token: %s", b1.Result("list"))
	}
	kek := strings.TrimSpace(string(b1.Result("enroll").Stdout[bytes.LastIndex(b1.Result("enroll").Stdout, []byte("KEK UID "))+8:]))
	t.Logf("enrolled: %s", b1.Result("enroll").Stdout)

	serve := "{ echo 'socket none'; echo 'audit-log none'; echo 'token-timeout 20s'\n" +
		"  echo 'kmip-ca /etc/kmip/ca.pem'; echo 'kmip-cert /etc/kmip/client.pem'; echo 'kmip-key /etc/kmip/client.key'\n" +
		"  echo \"volume data $(disk data0)\"; } > /run/diskcryptd.conf\n" +
		"diskcryptd serve --once --config /run/diskcryptd.conf"
	before := srv.Requests()
	b2 := boot(t, f.m, tlsFiles,
		Step{Name: "no-passphrase", Script: "! test -e " + passFile},
		Step{Name: "serve", Script: serve},
		stepRead("data"),
	)
	ok(t, b2, "no-passphrase")
	if r := ok(t, b2, "serve"); !strings.Contains(string(r.Stdout), "data: unlocked (token 0") {
		t.Fatalf("serve --once did not unlock through the KMS: %s", r)
	}
	if r := ok(t, b2, "read"); !bytes.Equal(r.Stdout, f.marker) {
		t.Fatalf("data read through the KMS-unlocked mapping differs from what was written")
	}
	if srv.Requests() == before {
		t.Errorf("the KMS saw no request during the boot")
	}
	t.Logf("boot through the KMS: %s", b2.Result("serve").Stdout)

	// Remote revocation: the KMS administrator revokes the KEK.
	id, err := kms.TLSFiles(srv.CA.CertFile, srv.Client.CertFile, srv.Client.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kms.New(kms.Config{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Revoke(t.Context(), []string{srv.Addr}, kek, "server decommissioned"); err != nil {
		t.Fatalf("revoke KEK %q: %v", kek, err)
	}
	b3 := boot(t, f.m, tlsFiles, Step{Name: "serve", Script: serve}, Step{Name: "not-mapped", Script: "! mapped data 2>/dev/null"})
	r := b3.Result("serve")
	if r == nil || r.Exit == 0 {
		t.Fatalf("serve --once after the KEK was revoked: %v, want a non-zero exit", r)
	}
	out := string(r.Stdout) + string(r.Stderr)
	if !strings.Contains(out, "data: locked") || !strings.Contains(out, server) || !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("after revocation the volume must stay locked, naming the server and the KMS's reason: %s", r)
	}
	ok(t, b3, "not-mapped")
	t.Logf("after revocation: %s", r.Stdout)
}
