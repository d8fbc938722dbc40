package kms_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

const testUUID = "5c1d6a3e-1111-4c43-9d2e-6f1f2a3b4c5d"

type fixture struct {
	srv  *kmiptest.Server
	p    *kms.Protector
	logs *bytes.Buffer
}

func newProtector(t testing.TB, srv *kmiptest.Server, id *kmiptest.Identity, tm kms.Timing, logs *bytes.Buffer) *kms.Protector {
	t.Helper()
	ident, err := kms.TLSFiles(srv.CA.CertFile, id.CertFile, id.KeyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	var log hclog.Logger
	if logs != nil {
		log = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	}
	p, err := kms.New(kms.Config{Identity: ident, Timing: tm, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t *testing.T) *fixture {
	t.Helper()
	srv := kmiptest.Start(t)
	var logs bytes.Buffer
	return &fixture{srv: srv, p: newProtector(t, srv, srv.Client, kms.Timing{Attempt: 10 * time.Second}, &logs), logs: &logs}
}

// enroll enrolls keyslot slot of testUUID and returns the passphrase and the token as
// the volume would store it.
func (f *fixture) enroll(t *testing.T, e kms.Enrollment) ([]byte, unlock.Token) {
	t.Helper()
	e.Protector = f.p
	if e.VolumeUUID == "" {
		e.VolumeUUID = testUUID
	}
	if e.Servers == nil {
		e.Servers = []string{f.srv.Addr}
	}
	en, err := e.Enroll(t.Context())
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	en.Token["keyslots"] = []string{itoa(e.Keyslot)}
	js, err := json.Marshal(en.Token)
	if err != nil {
		t.Fatal(err)
	}
	return en.Passphrase, unlock.Token{ID: 0, Type: kms.TokenType, Keyslots: []int{e.Keyslot}, JSON: js, VolumeUUID: e.VolumeUUID}
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + string(rune('0'+n))) }

func TestEnrollUnseal(t *testing.T) {
	f := start(t)
	for _, mode := range []string{kms.ModeWrap, kms.ModeGet} {
		t.Run(mode, func(t *testing.T) {
			pass, tok := f.enroll(t, kms.Enrollment{Keyslot: 1, Mode: mode})
			got, err := f.p.Unseal(t.Context(), tok)
			if err != nil {
				t.Fatalf("unseal: %v", err)
			}
			if !bytes.Equal(got, pass) {
				t.Fatalf("unsealed passphrase differs from the enrolled one")
			}
			t.Logf("token: %s", tok.JSON)
		})
	}
	if n := f.srv.Requests(); n == 0 {
		t.Errorf("server log counted no requests")
	}
	_ = errors.New
}
