package clevis

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskcryptd/diskcryptd/tpm"
)

// TestTPMDeviceWaitHonoursContext: a tpm2 pin queued behind another call that holds
// the TPM gives up when its context ends, instead of waiting for the holder.
func TestTPMDeviceWaitHonoursContext(t *testing.T) {
	h := sealedHeader(t)
	entered := make(chan struct{})
	release := make(chan struct{})
	d := &TPMDevice{Open: func(ctx context.Context) (transport.TPMCloser, error) {
		close(entered)
		<-release
		return nil, errors.New("no TPM here")
	}}
	first := make(chan error, 1)
	go func() { _, err := d.Unseal(context.Background(), h); first <- err }()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() { _, err := d.Unseal(ctx, h); second <- err }()
	cancel()
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("queued call: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		close(release)
		t.Fatal("a queued tpm2 pin ignored its cancelled context while another call held the TPM")
	}
	close(release)
	if err := <-first; err == nil {
		t.Fatal("first call: no error from a TPM that is not there")
	}
}

// sealedHeader is a clevis tpm2 header whose blobs parse (a keyedhash object with
// no policy); no TPM ever sees it in these tests.
func sealedHeader(t *testing.T) *tpm.ClevisTPM2 {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	pub := tpm2.New2B(tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash,
			&tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
	})
	priv := tpm2.TPM2BPrivate{Buffer: make([]byte, 16)}
	h := &tpm.ClevisTPM2{Hash: "sha256", Key: "ecc", JWKPub: b64(tpm2.Marshal(pub)), JWKPriv: b64(tpm2.Marshal(priv))}
	if _, err := (&tpm.ClevisToken{TPM2: *h}).Sealed(); err != nil {
		t.Fatalf("test header does not parse: %v", err)
	}
	return h
}
