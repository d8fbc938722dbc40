package tang

import (
	"context"
	"crypto"
	"errors"
	"os"
	"slices"
	"testing"

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
	if _, err := ParseKeys([]byte(`{"keys":[{"kty":"EC","crv":"P-256","d":"AA","x":"AA","y":"AA","key_ops":["verify"]}]}`)); !errors.Is(err, ErrAdv) {
		t.Fatalf("private key: %v, want ErrAdv", err)
	}
}
