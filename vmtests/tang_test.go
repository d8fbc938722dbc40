package vmtests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// startTang starts tangd on the host and returns it, its URL as the guest sees it at
// guestPort, and the forward that takes the guest there.
func startTang(t *testing.T, guestPort int) (*tangtest.Server, string, GuestFwd) {
	t.Helper()
	testpeer.Require(t, "socat")
	srv := tangtest.Start(t)
	return srv, fmt.Sprintf("http://%s:%d", GuestAddr, guestPort), GuestFwd{GuestPort: guestPort, HostPort: srv.Port()}
}

// TestTangSSSBoot: a guest whose only way out is a guestfwd to tangd on the host
// (user networking, restrict=on) enrolls sss(tpm2 AND tang) with clevis's
// configuration; "serve --once" unlocks the volume through both; with tangd stopped
// the next boot's "serve --once" leaves it locked and names the Tang URL and why.
func TestTangSSSBoot(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	srv, tangURL, fwd := startTang(t, 7500)

	f := newFixture(t, e)
	f.m.GuestFwd = []GuestFwd{fwd}
	cfg := fmt.Sprintf(`{"t":2,"pins":{"tpm2":{"pcr_ids":"7"},"tang":[{"url":"%s","thp":"%s"}]}}`, tangURL, srv.SigningThumbprints()[0])
	serve := "{ echo 'socket none'; echo 'audit-log none'; echo 'token-timeout 20s'; echo \"volume data $(disk data0)\"; } > /run/diskcryptd.conf\n" +
		"diskcryptd serve --once --config /run/diskcryptd.conf"
	b1 := boot(t, f.m, f.files(),
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "enroll", Script: "diskcryptd enroll clevis --key-file " + passFile + " --pin sss --config '" + cfg + "' $(disk data0)"},
		Step{Name: "list", Script: "diskcryptd token list $(disk data0)"},
		Step{Name: "serve", Script: serve},
		Step{Name: "mapped", Script: "mapped data"},
	)
	ok(t, b1, "format")
	ok(t, b1, "enroll")
	if want := "sss t=2: tpm2(pcr 7), tang(" + tangURL + ")"; !strings.Contains(string(ok(t, b1, "list").Stdout), want) {
		t.Errorf("token list lacks %q: %s", want, b1.Result("list"))
	}
	if r := ok(t, b1, "serve"); !strings.Contains(string(r.Stdout), "data: unlocked (token 0") {
		t.Fatalf("serve --once did not unlock through the clevis token: %s", r)
	}
	ok(t, b1, "mapped")
	t.Logf("with tangd up: %s", b1.Result("serve").Stdout)

	srv.Stop()
	b2 := boot(t, f.m, nil, Step{Name: "serve", Script: serve})
	r := b2.Result("serve")
	if r == nil || r.Exit == 0 {
		t.Fatalf("serve --once with tangd stopped: %v, want a non-zero exit", r)
	}
	out := string(r.Stdout) + string(r.Stderr)
	if !strings.Contains(out, "data: locked") || !strings.Contains(out, "tang "+tangURL) {
		t.Fatalf("with tangd stopped the volume must stay locked and the reason name %s: %s", tangURL, r)
	}
	t.Logf("with tangd stopped: %s", r.Stdout)
}
