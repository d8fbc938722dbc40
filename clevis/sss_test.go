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
		// A clevis header in each, so that only the allow-lists can refuse them.
		{"alg not allowed", "eyJhbGciOiJSU0ExXzUiLCJlbmMiOiJBMjU2R0NNIiwiY2xldmlzIjp7InBpbiI6InRwbTIiLCJ0cG0yIjp7fX19.AA.AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA", "unexpected key algorithm"},
		{"enc not allowed", "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2IiwiY2xldmlzIjp7InBpbiI6InRwbTIiLCJ0cG0yIjp7fX19..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA", "unexpected content encryption"},
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
	if !j.Uses("tpm2") || !j.Uses("sss") || j.Uses("tang") || j.Children[0].Uses("sss") {
		t.Fatal("Uses does not walk the pin tree")
	}
}

// TestSSSShareAtZero: a share at x = 0 is the key itself; it is refused, and point
// never draws it.
func TestSSSShareAtZero(t *testing.T) {
	poly := fixedPolynomial(2)
	a, _ := poly.point()
	zero := make([]byte, 2*sssBytes)
	poly.e[0].FillBytes(zero[sssBytes:]) // (0, f(0))
	if _, err := recoverSecret(poly.p, [][]byte{a, zero}); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "x = 0") {
		t.Fatalf("share at x = 0: %v, want ErrMalformed saying x = 0", err)
	}
	// A polynomial over the smallest prime (p = 2): x can only be 0 or 1.
	small := &polynomial{p: big.NewInt(2), e: []*big.Int{big.NewInt(1)}}
	for range 64 {
		pt, err := small.point()
		if err != nil {
			t.Fatal(err)
		}
		if new(big.Int).SetBytes(pt[:sssBytes]).Sign() == 0 {
			t.Fatal("point drew x = 0")
		}
	}
}

// TestSSSWipe: wipe zeroes the coefficients' memory, not only their length.
func TestSSSWipe(t *testing.T) {
	poly := fixedPolynomial(3)
	var words [][]big.Word
	for _, e := range poly.e {
		words = append(words, e.Bits())
	}
	poly.wipe()
	for i, w := range words {
		for _, x := range w {
			if x != 0 {
				t.Fatalf("coefficient %d still in memory after wipe: %x", i, w)
			}
		}
	}
}

// fixedPolynomial is a polynomial of degree t-1 modulo the prime 2^256 - 189, with
// coefficients 1, 2, ..., without the cost of drawing a safe prime.
func fixedPolynomial(t int) *polynomial {
	p := new(big.Int).Lsh(big.NewInt(1), 256)
	p.Sub(p, big.NewInt(189))
	poly := &polynomial{p: p}
	for i := range t {
		poly.e = append(poly.e, new(big.Int).Lsh(big.NewInt(int64(i+1)), 200))
	}
	return poly
}

// TestOctKey: the key of the tpm2 pin's sealed JWK, as clevis and we write it.
func TestOctKey(t *testing.T) {
	for _, tc := range []struct {
		name, jwk string
		want      []byte // nil: refused
	}{
		{"clevis", `{"alg":"A256GCM","k":"AAECAw","key_ops":["encrypt","decrypt"],"kty":"oct"}`, []byte{0, 1, 2, 3}},
		{"escaped", `{"k":"AAEC\u0041w","kty":"oct"}`, nil},
		{"not a string", `{"k":12,"kty":"oct"}`, nil},
		{"empty", `{"k":"","kty":"oct"}`, nil},
		{"not base64url", `{"k":"AA+/","kty":"oct"}`, nil},
		{"EC", `{"k":"AAECAw","kty":"EC"}`, nil},
		{"not JSON", `{"k":"AAECAw"`, nil},
	} {
		got, err := octKey([]byte(tc.jwk))
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: accepted, key %x", tc.name, got)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %x, %v; want %x", tc.name, got, err, tc.want)
		}
	}
}
