package clevis

import (
	"os"
	"testing"
)

// FuzzParseToken feeds LUKS2 token JSON, seeded with tokens clevis luks bind wrote
// (tang, and sss over two tangs), to ParseToken and Describe: errors are fine,
// panics and hangs are not.
func FuzzParseToken(f *testing.F) {
	for _, name := range []string{"testdata/clevis-tang-token.json", "testdata/clevis-sss-token.json"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseToken(b)
		if err != nil {
			return
		}
		_ = Describe(tok.JWE)
	})
}

// FuzzParseJWE feeds JWEs in every serialization to ParseJWE.
func FuzzParseJWE(f *testing.F) {
	f.Add([]byte(`eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA`))
	f.Add([]byte(`{"protected":"eyJhbGciOiJkaXIifQ","iv":"","ciphertext":"","tag":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if j, err := ParseJWE(b); err == nil {
			_ = Describe(j)
		}
	})
}
