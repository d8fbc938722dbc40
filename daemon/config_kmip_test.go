package daemon

import (
	"errors"
	"strings"
	"testing"
)

func TestParseConfigKMIP(t *testing.T) {
	all := "kmip-ca /etc/d/ca.pem\nkmip-cert /etc/d/c.pem\nkmip-key /etc/d/c.key\n"
	for _, tc := range []struct {
		in  string
		ca  string
		err bool
	}{
		{all, "/etc/d/ca.pem", false},
		{"", "", false},
		{strings.Replace(all, "/etc/d/c.key", "tpm2:/etc/d/c.tpm2key", 1), "/etc/d/ca.pem", false},
		{strings.Replace(all, "/etc/d/ca.pem", "tpm2:/etc/d/ca.pem", 1), "", true}, // only the key may live in the TPM
		{"kmip-ca /etc/d/ca.pem\n", "", true},                                      // not all three
		{strings.Replace(all, "/etc/d/c.key", "c.key", 1), "", true},               // relative
		{strings.Replace(all, "/etc/d/c.key", "/a /b", 1), "", true},               // two values
	} {
		c, err := ParseConfig(strings.NewReader(tc.in))
		if tc.err {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("%q: err = %v, want ErrConfig", tc.in, err)
			}
			continue
		}
		if err != nil || c.KMIPCA != tc.ca {
			t.Errorf("%q: got %q, %v; want %q", tc.in, c.KMIPCA, err, tc.ca)
		}
	}
	c, _ := ParseConfig(strings.NewReader(all))
	if c.KMIPCert != "/etc/d/c.pem" || c.KMIPKey != "/etc/d/c.key" {
		t.Errorf("parsed %+v", c)
	}
}
