package vmtests

import (
	"bytes"
	"strings"
	"testing"
)

// TestResealAfterFirmwareUpdate is issue 11's fleet scenario. Boot 1 provisions a
// disk with a TPM2 protector sealed to PCRs 0+7 and a Tang protector (tangd on the
// host, reached through a guestfwd), drops the passphrase, and serve --once unlocks
// through the TPM. Then a firmware update: from boot 2 on the firmware measures
// something new into PCRs 0 and 7 (the guest extends them first thing, as SeaBIOS
// would measure a new image and a new Secure Boot db). Boot 2: the TPM refuses, serve
// opens the volume through Tang and reseals the TPM2 protector to the new values,
// and says so in its status and the audit log. Boot 3, tangd stopped: the TPM alone
// unlocks it and the data written in boot 1 reads back.
func TestResealAfterFirmwareUpdate(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	srv, tangURL, fwd := startTang(t, 7501)

	f := newFixture(t, e)
	f.m.GuestFwd = []GuestFwd{fwd}
	serve := "{ echo 'socket none'; echo 'audit-log /run/audit.jsonl'; echo 'token-timeout 30s'; echo \"volume data $(disk data0) reseal=tpm2\"; } > /run/diskcryptd.conf\n" +
		"diskcryptd serve --once --config /run/diskcryptd.conf"
	// The new firmware's measurements, taken at every boot after the update.
	firmware := Step{Name: "firmware", Script: "pcrextend -pcr 0 -data seabios-2.0 && pcrextend -pcr 7 -data secureboot-db-2026"}
	pcrs := Step{Name: "pcrs", Script: "cat /sys/class/tpm/tpm0/pcr-sha256/0 /sys/class/tpm/tpm0/pcr-sha256/7"}
	audit := Step{Name: "audit", Script: "DISKCRYPTD_AUDIT_LOG=/run/audit.jsonl diskcryptd audit"}

	b1 := boot(t, f.m, f.files(),
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "enroll-tpm2", Script: "diskcryptd enroll tpm2 --key-file " + passFile + " --tpm2-pcrs 0+7 $(disk data0)"},
		Step{Name: "enroll-tang", Script: "diskcryptd enroll clevis --key-file " + passFile + " --pin tang --config '{\"url\":\"" + tangURL + "\"}' --tang-thumbprint " + srv.SigningThumbprints()[0] + " $(disk data0)"},
		Step{Name: "drop-passphrase", Script: "diskcryptd keyslot remove --slot 0 $(disk data0)\ndiskcryptd token list $(disk data0)"},
		Step{Name: "serve", Script: serve},
		stepWrite("data"),
		pcrs,
	)
	for _, s := range []string{"format", "enroll-tpm2", "enroll-tang", "drop-passphrase", "write"} {
		ok(t, b1, s)
	}
	if r := ok(t, b1, "serve"); !strings.Contains(string(r.Stdout), "data: unlocked (token 0:systemd-tpm2") {
		t.Fatalf("boot 1: serve did not unlock through the TPM: %s", r)
	}
	t.Logf("boot 1 tokens:\n%s", b1.Result("drop-passphrase").Stdout)

	b2 := boot(t, f.m, nil, firmware, pcrs, Step{Name: "serve", Script: serve},
		Step{Name: "mapped", Script: "mapped data"}, audit,
		Step{Name: "tokens", Script: "diskcryptd token list $(disk data0)"})
	ok(t, b2, "firmware")
	if bytes.Equal(ok(t, b1, "pcrs").Stdout, ok(t, b2, "pcrs").Stdout) {
		t.Fatal("PCRs 0 and 7 did not change with the firmware update")
	}
	r := ok(t, b2, "serve")
	out := string(r.Stdout)
	if !strings.Contains(out, "data: unlocked (token 1:clevis") || !strings.Contains(out, "resealed: TPM2 token 0 (keyslots [1]) resealed as token 0") ||
		!strings.Contains(out, "sha256 PCRs 0+7") {
		t.Fatalf("boot 2: serve did not open through Tang and reseal: %s", r)
	}
	ok(t, b2, "mapped")
	a := string(ok(t, b2, "audit").Stdout)
	for _, want := range []string{"key-release failure", "type=systemd-tpm2", "pcrs=sha256:0=", "key-release success", "type=clevis", "reseal success"} {
		if !strings.Contains(a, want) {
			t.Errorf("boot 2 audit log lacks %q:\n%s", want, a)
		}
	}
	t.Logf("boot 2 serve: %s", out)
	t.Logf("boot 2 audit:\n%s", a)

	srv.Stop()
	b3 := boot(t, f.m, nil, firmware, Step{Name: "serve", Script: serve}, stepRead("data"), audit)
	r = ok(t, b3, "serve")
	if !strings.Contains(string(r.Stdout), "data: unlocked (token 0:systemd-tpm2") || strings.Contains(string(r.Stdout), "resealed") {
		t.Fatalf("boot 3 (tangd stopped): serve did not unlock through the TPM alone: %s", r)
	}
	if got := ok(t, b3, "read").Stdout; !bytes.Equal(got, f.marker) {
		t.Fatalf("boot 3: data written in boot 1 reads back differently")
	}
	if a := string(ok(t, b3, "audit").Stdout); strings.Contains(a, "type=clevis") {
		t.Errorf("boot 3 tried Tang although the TPM opened the volume:\n%s", a)
	}
	t.Logf("walls: provision %s, firmware update + reseal %s, TPM alone %s", b1.Wall, b2.Wall, b3.Wall)
}
