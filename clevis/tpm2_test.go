package clevis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
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

// TestTPMDeviceFlushesStaleHandles: on a TPM without a resource manager (swtpm's
// socket, as /dev/tpm0) another process left its sessions and objects loaded, as
// systemd-cryptsetup does; a tpm2 pin still unseals: the stale handles are flushed
// and the command retried once.
func TestTPMDeviceFlushesStaleHandles(t *testing.T) {
	spec := tpmtest.StartSwtpm(t)
	ctx := context.Background()
	d := &TPMDevice{Device: spec}
	h, err := d.Seal(ctx, []byte(`{"k":"AAECAw","kty":"oct"}`), "", "sha256")
	if err != nil {
		t.Fatal(err)
	}
	other, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, _, err := tpm2.HMACSession(other, tpm2.TPMAlgSHA256, 16); err != nil {
			t.Fatalf("leave a session: %v", err)
		}
		if _, err := tpm.CreatePrimary(ctx, other, tpm.PrimaryECC); err != nil {
			t.Fatalf("leave an object: %v", err)
		}
	}
	other.Close()
	got, err := d.Unseal(ctx, h)
	if err != nil {
		t.Fatalf("unseal with stale handles left by another client: %v", err)
	}
	if string(got) != `{"k":"AAECAw","kty":"oct"}` {
		t.Fatalf("unsealed %q", got)
	}
}

// TestRegenKeepsTPM2Binding: regen of sss(tpm2 OR tang) re-seals the tpm2 pin to
// today's PCR values; after PCR 7 changed (another boot state) the tang share alone
// meets the threshold, but regen must refuse rather than bind the TPM pin to the new
// state.
func TestRegenKeepsTPM2Binding(t *testing.T) {
	srv := tangtest.Start(t)
	spec := tpmtest.StartSwtpm(t)
	ctx := context.Background()
	pins := testPins(t)
	pins.TPM2 = &TPMDevice{Device: spec}
	cfg := fmt.Sprintf(`{"t":1,"pins":{"tpm2":{"pcr_ids":"7"},"tang":%s}}`, tangCfg(srv))
	compact, err := pins.Encrypt(ctx, "sss", json.RawMessage(cfg), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := ParseJWE([]byte(compact))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pins.Regen(ctx, j, ""); err != nil {
		t.Fatalf("regen in the boot state the pin was sealed to: %v", err)
	}
	tp, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	err = tpm.Extend(ctx, tp, 7, []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA256}, []byte("another boot loader"))
	tp.Close()
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := pins.Decrypt(ctx, j); err != nil || string(pt) != "secret" {
		t.Fatalf("the tang share alone should still open it: %q, %v", pt, err)
	}
	re, err := pins.Regen(ctx, j, "")
	if err == nil {
		j2, _ := ParseJWE([]byte(re))
		t.Fatalf("regen after PCR 7 changed re-bound the tpm2 pin to the new boot state: %s", Describe(j2))
	}
	if !strings.Contains(err.Error(), "tpm2(pcr 7)") {
		t.Fatalf("refusal does not name the tpm2 pin: %v", err)
	}
	t.Logf("refused: %v", err)
}
