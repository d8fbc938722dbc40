package daemon

import (
	"errors"
	"strings"
	"testing"
)

func TestParseConfigTPM2Signature(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"tpm2-signature /run/systemd/tpm2-pcr-signature.json\n", "/run/systemd/tpm2-pcr-signature.json", false},
		{"tpm2-signature /etc/diskcryptd/pcr-sig.json   # signed by the fleet key\n", "/etc/diskcryptd/pcr-sig.json", false},
		{"", "", false},
		{"tpm2-signature\n", "", true},
		{"tpm2-signature relative.json\n", "", true},
		{"tpm2-signature /a /b\n", "", true},
	} {
		c, err := ParseConfig(strings.NewReader(tc.in))
		if tc.err {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("%q: err = %v, want ErrConfig", tc.in, err)
			}
			continue
		}
		if err != nil || c.TPMSignature != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.in, c.TPMSignature, err, tc.want)
		}
	}
}
