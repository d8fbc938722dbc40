package tpmkey_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/kms/tpmkey"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

func opener(spec string) tpmkey.OpenFunc {
	return func(context.Context) (transport.TPMCloser, error) { return tpm.Open(spec) }
}

// TestTPMClientKey: a client key made in one swtpm signs a CSR; with the certificate
// the CA issues for it, the TLS handshake with pykmip-server works and a KMIP token
// enrolls and unseals. The same blob loaded on a second swtpm signs nothing, so the
// handshake fails.
func TestTPMClientKey(t *testing.T) {
	a, b := tpmtest.StartSwtpm(t), tpmtest.StartSwtpm(t)
	srv := kmiptest.Start(t)
	ta, err := tpm.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tpmkey.Create(t.Context(), ta)
	ta.Close()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tpmkey.NewSigner(blob, opener(a))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: srv.Client.CN}}, signer)
	if err != nil {
		t.Fatalf("CSR signed in the TPM: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("CSR does not verify: %v", err)
	}
	certFile := srv.CA.IssuePublic(t, csr.Subject.CommonName, false, csr.PublicKey)

	id, err := kms.TLSFiles(srv.CA.CertFile, certFile, "", signer)
	if err != nil {
		t.Fatal(err)
	}
	p, err := kms.New(kms.Config{Identity: id, Timing: kms.Timing{Attempt: 10 * time.Second, Rounds: 1}})
	if err != nil {
		t.Fatal(err)
	}
	e := &kms.Enrollment{Protector: p, VolumeUUID: "7b0e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4", Keyslot: 1, Servers: []string{srv.Addr}}
	en, err := e.Enroll(t.Context())
	if err != nil {
		t.Fatalf("enrol with the TPM-held client key: %v", err)
	}
	en.Token["keyslots"] = []string{"1"}
	js, _ := json.Marshal(en.Token)
	tok := unlock.Token{Type: kms.TokenType, Keyslots: []int{1}, JSON: js, VolumeUUID: "7b0e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"}
	if _, err := p.Unseal(t.Context(), tok); err != nil {
		t.Fatalf("unseal with the TPM-held client key: %v", err)
	}

	// The blob copied to another machine's TPM.
	other, err := tpmkey.NewSigner(blob, opener(b))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.SignContext(t.Context(), make([]byte, 32), cryptoSHA256{}); !errors.Is(err, tpmkey.ErrWrongTPM) {
		t.Errorf("sign on the second swtpm: %v, want ErrWrongTPM", err)
	}
	id2, err := kms.TLSFiles(srv.CA.CertFile, certFile, "", other)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := kms.New(kms.Config{Identity: id2, Timing: kms.Timing{Attempt: 10 * time.Second, Rounds: 1}})
	_, err = p2.Unseal(t.Context(), tok)
	t.Logf("blob on another TPM: %v", err)
	if err == nil || !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("handshake with the blob on another TPM: %v", err)
	}
}

type cryptoSHA256 struct{}

func (cryptoSHA256) HashFunc() crypto.Hash { return crypto.SHA256 }
