package tang

import (
	"os"
	"testing"
)

// FuzzParseAdv feeds advertisements, seeded with a real tangd answer, to ParseAdv:
// errors are fine, panics and hangs are not.
func FuzzParseAdv(f *testing.F) {
	seed, err := os.ReadFile("testdata/adv.jws")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"payload":"e30","protected":"eyJhbGciOiJFUzUxMiJ9","signature":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAdv(b)
		if err == nil && (len(a.Signing) == 0 || len(a.Exchange) == 0) {
			t.Fatal("accepted an advertisement without signing or exchange keys")
		}
	})
}

// FuzzParseRecAnswer feeds /rec answers, seeded with a real tangd answer.
func FuzzParseRecAnswer(f *testing.F) {
	seed, err := os.ReadFile("testdata/rec.jwk")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, "P-521")
	f.Add([]byte(`{"kty":"EC","crv":"P-256","x":"","y":""}`), "P-256")
	f.Fuzz(func(t *testing.T, b []byte, crv string) {
		x, y, err := ParseRecAnswer(b, crv)
		if err == nil && !onCurve(curveByName(crv), x, y) {
			t.Fatal("accepted a point off the curve")
		}
	})
}
