package daemon

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseConfigTang(t *testing.T) {
	c, err := ParseConfig(strings.NewReader("tang-timeout 2s\ntang-attempts 4\ntang-ca-file /etc/diskcryptd/tang-ca.pem\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.TangTimeout != 2*time.Second || c.TangAttempts != 4 || c.TangCAFile != "/etc/diskcryptd/tang-ca.pem" {
		t.Fatalf("got %v %d %q", c.TangTimeout, c.TangAttempts, c.TangCAFile)
	}
	for _, in := range []string{"tang-timeout -1s\n", "tang-timeout\n", "tang-attempts 0\n", "tang-attempts 11\n", "tang-ca-file\n"} {
		if _, err := ParseConfig(strings.NewReader(in)); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: err = %v, want ErrConfig", in, err)
		}
	}
}
