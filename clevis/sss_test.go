package clevis

import (
	"bytes"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// TestSSSRecover: any t of n shares give the secret; t-1 do not.
func TestSSSRecover(t *testing.T) {
	poly, err := newPolynomial(3)
	if err != nil {
		t.Fatal(err)
	}
	var pts [][]byte
	for range 5 {
		pt, err := poly.point()
		if err != nil {
			t.Fatal(err)
		}
		pts = append(pts, pt)
	}
	want := poly.key()
	for _, idx := range [][]int{{0, 1, 2}, {4, 2, 0}, {1, 3, 4}} {
		got, err := recoverSecret(poly.p, [][]byte{pts[idx[0]], pts[idx[1]], pts[idx[2]]})
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("shares %v: %x, %v; want %x", idx, got, err, want)
		}
	}
	if got, _ := recoverSecret(poly.p, pts[:2]); bytes.Equal(got, want) {
		t.Fatal("two shares of a t=3 polynomial gave the secret")
	}
	if !poly.p.ProbablyPrime(20) || !new(big.Int).Rsh(poly.p, 1).ProbablyPrime(20) || poly.p.BitLen() != 256 {
		t.Fatalf("p = %x is not a 256-bit safe prime", poly.p)
	}
}

func TestSSSRefuses(t *testing.T) {
	poly, _ := newPolynomial(2)
	a, _ := poly.point()
	b, _ := poly.point()
	huge := bytes.Repeat([]byte{0xff}, 64)
	for _, tc := range []struct {
		name string
		pts  [][]byte
		want string
	}{
		{"duplicate", [][]byte{a, a}, "same point"},
		{"outside the field", [][]byte{a, huge}, "outside the field"},
		{"short", [][]byte{a, b[:10]}, "bytes"},
	} {
		if _, err := recoverSecret(poly.p, tc.pts); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrMalformed saying %q", tc.name, err, tc.want)
		}
	}
	b64 := base64.RawURLEncoding.EncodeToString
	composite := new(big.Int).Mul(poly.p, big.NewInt(1)) // p itself is prime; make one that is not
	composite.Add(composite, big.NewInt(1))
	for _, tc := range []struct{ name, p string }{
		{"not base64", "!!"},
		{"short", b64(make([]byte, 16))},
		{"composite", b64(composite.FillBytes(make([]byte, 32)))},
	} {
		if _, err := parsePrime(tc.p); !errors.Is(err, ErrMalformed) {
			t.Errorf("p %s: %v, want ErrMalformed", tc.name, err)
		}
	}
}

// sssJWE builds an sss JWE with the given header fields and n tpm2-shaped children.
func sssJWE(t *testing.T, tt int, p string, children []string) string {
	t.Helper()
	key := make([]byte, 32)
	s, err := encryptDir(key, map[string]any{"pin": "sss", "sss": map[string]any{"t": tt, "p": p, "jwe": children}}, []byte("pass"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseJWERefuses(t *testing.T) {
	poly, _ := newPolynomial(1)
	p := base64.RawURLEncoding.EncodeToString(poly.p.FillBytes(make([]byte, 32)))
	child, err := encryptDir(make([]byte, 32), map[string]any{"pin": "tpm2", "tpm2": map[string]any{"pcr_ids": "7"}}, []byte("share"))
	if err != nil {
		t.Fatal(err)
	}
	nested := child
	for range MaxDepth + 2 {
		nested = sssJWE(t, 1, p, []string{nested})
	}
	for _, tc := range []struct {
		name, jwe, want string
	}{
		{"t > n", sssJWE(t, 3, p, []string{child, child}), "threshold"},
		{"t = 0", sssJWE(t, 0, p, []string{child}), "threshold"},
		{"no shares", sssJWE(t, 1, p, nil), "shares"},
		{"bad p", sssJWE(t, 1, "AAAA", []string{child}), "sss p"},
		{"too deep", nested, "deeper"},
		{"oversized", `"` + strings.Repeat("A", MaxToken+1) + `"`, "bytes"},
		{"unknown pin", func() string {
			s, _ := encryptDir(make([]byte, 32), map[string]any{"pin": "null"}, nil)
			return s
		}(), "unknown pin"},
		{"no clevis header", "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA", "clevis"},
		{"unprotected header", `{"protected":"eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0","unprotected":{"clevis":{}},"iv":"","ciphertext":"","tag":""}`, "unprotected"},
		{"alg not allowed", "eyJhbGciOiJSU0ExXzUiLCJlbmMiOiJBMjU2R0NNIn0.AA.AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA", ""},
		{"zip (a deflate bomb go-jose would inflate)", func() string {
			enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: make([]byte, 32)},
				(&jose.EncrypterOptions{Compression: jose.DEFLATE}).WithHeader("clevis", map[string]any{"pin": "tpm2", "tpm2": map[string]any{}}))
			if err != nil {
				t.Fatal(err)
			}
			obj, err := enc.Encrypt(make([]byte, 200<<10))
			if err != nil {
				t.Fatal(err)
			}
			s, _ := obj.CompactSerialize()
			return s
		}(), "zip"},
	} {
		_, err := ParseJWE([]byte(tc.jwe))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrMalformed saying %q", tc.name, err, tc.want)
		}
	}
}

// TestDescribe: the pin tree as token list shows it.
func TestDescribe(t *testing.T) {
	poly, _ := newPolynomial(1)
	p := base64.RawURLEncoding.EncodeToString(poly.p.FillBytes(make([]byte, 32)))
	tpm2, err := encryptDir(make([]byte, 32), map[string]any{"pin": "tpm2", "tpm2": map[string]any{"pcr_ids": "0,7", "pcr_bank": "sha1"}}, []byte("share"))
	if err != nil {
		t.Fatal(err)
	}
	inner := sssJWE(t, 1, p, []string{tpm2, tpm2})
	outer := sssJWE(t, 2, p, []string{tpm2, inner})
	j, err := ParseJWE([]byte(outer))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Describe(j), "sss t=2: tpm2(pcr 0+7 sha1), [sss t=1: tpm2(pcr 0+7 sha1), tpm2(pcr 0+7 sha1)]"; got != want {
		t.Fatalf("Describe = %q, want %q", got, want)
	}
}
