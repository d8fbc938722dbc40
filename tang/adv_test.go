package tang

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
)

// TestAdvFromTangd: a real advertisement verifies, and its signing key's SHA-256
// thumbprint is the name tangd-keygen gave the key file.
func TestAdvFromTangd(t *testing.T) {
	srv := tangtest.Start(t)
	c := &Client{}
	a, err := c.Adv(context.Background(), srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	want := srv.SigningThumbprints()
	if got := a.SigningThumbprints(); !slices.Equal(got, want) {
		t.Fatalf("signing thumbprints %v, want %v", got, want)
	}
	if a.SignedBy(want[0]) == nil {
		t.Fatal("SignedBy(its own thumbprint) = nil")
	}
	if k := a.SignedBy(a.Signing[0].Thumbprint(crypto.SHA1)); k == nil {
		t.Fatal("SHA-1 thumbprints (older clevis bindings) are not recognised")
	}
	if _, err := c.Adv(context.Background(), srv.URL, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown thumbprint: %v, want ErrUnknownKey", err)
	}
}

// TestParseAdvRejects: a payload changed after signing, and a private key in the
// advertisement, are refused.
func TestParseAdvRejects(t *testing.T) {
	b, err := os.ReadFile("testdata/adv.jws")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseAdv(b); err != nil {
		t.Fatalf("real advertisement: %v", err)
	}
	tampered := slices.Clone(b)
	i := slices.Index(tampered, '"') + 20 // inside the payload
	tampered[i] ^= 1
	if _, err := ParseAdv(tampered); !errors.Is(err, ErrAdv) {
		t.Fatalf("tampered advertisement: %v, want ErrAdv", err)
	}
	// The same valid key set, once public and once with the private part.
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := func(k any) []byte {
		b, err := (&jose.JSONWebKey{Key: k}).MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		m["key_ops"] = []string{"verify", "deriveKey"}
		out, _ := json.Marshal(map[string]any{"keys": []any{m}})
		return out
	}
	if _, err := ParseKeys(set(&priv.PublicKey)); err != nil {
		t.Fatalf("public key: %v", err)
	}
	if _, err := ParseKeys(set(priv)); !errors.Is(err, ErrAdv) || !strings.Contains(err.Error(), "private") {
		t.Fatalf("private key: %v, want ErrAdv saying private", err)
	}
}

// TestHTTPSWithCAFile: an https:// Tang URL (a TLS front of tangd) works with the CA
// file that signed its certificate, and fails without it.
func TestHTTPSWithCAFile(t *testing.T) {
	srv := tangtest.Start(t)
	target, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(target))
	defer front.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	hc, err := NewHTTPClient(ca)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Client{HTTP: hc}).Adv(context.Background(), front.URL, ""); err != nil {
		t.Fatalf("https with the CA file: %v", err)
	}
	_, err = (&Client{}).Adv(context.Background(), front.URL, "")
	var te *Error
	if !errors.As(err, &te) || te.URL != front.URL || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("https without the CA: %v, want a certificate error naming %s", err, front.URL)
	}
}

// TestTooManyKeys: a key set of more keys than a Tang server advertises is refused
// before any signature is checked.
func TestTooManyKeys(t *testing.T) {
	b, err := os.ReadFile("testdata/adv.jws")
	if err != nil {
		t.Fatal(err)
	}
	var jws struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(b, &jws); err != nil {
		t.Fatal(err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(payload, &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("payload: %v", err)
	}
	if _, err := ParseKeys(payload); err != nil {
		t.Fatalf("the real key set: %v", err)
	}
	for len(set.Keys) <= maxKeys {
		set.Keys = append(set.Keys, set.Keys...)
	}
	many, _ := json.Marshal(set)
	if _, err := ParseKeys(many); !errors.Is(err, ErrAdv) || !strings.Contains(err.Error(), "keys") {
		t.Fatalf("%d keys: %v, want ErrAdv", len(set.Keys), err)
	}
}
