package vmtests

import (
	"bytes"
	"strings"
	"testing"
)

// fallback is the network protector of a reseal scenario: how to enrol it in the
// guest, what the daemon's configuration needs for it, and how to stop its server.
type fallback struct {
	// files are boot files every boot needs (TLS material).
	files map[string][]byte
	// enroll is the guest script that enrols it (after the TPM2 token).
	enroll string
	// config are extra daemon configuration lines.
	config []string
	// tokenType is the LUKS2 token type it writes.
	tokenType string
	// stop stops its server on the host.
	stop func()
}

// TestResealAfterFirmwareUpdate: the fleet scenario with Tang as the fallback.
func TestResealAfterFirmwareUpdate(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	srv, tangURL, fwd := startTang(t, 7501)
	f := newFixture(t, e)
	f.m.GuestFwd = []GuestFwd{fwd}
	resealScenario(t, f, fallback{
		enroll:    "diskcryptd enroll clevis --key-file " + passFile + " --pin tang --config '{\"url\":\"" + tangURL + "\"}' --tang-thumbprint " + srv.SigningThumbprints()[0] + " $(disk data0)",
		tokenType: "clevis",
		stop:      srv.Stop,
	})
}

// TestResealAfterFirmwareUpdateKMS: the same with the KMS (pykmip-server) as the
// fallback.
func TestResealAfterFirmwareUpdateKMS(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	srv, server, fwd, files := startKMS(t, 5697)
	f := newFixture(t, e)
	f.m.GuestFwd = []GuestFwd{fwd}
	resealScenario(t, f, fallback{
		files:     files,
		enroll:    "diskcryptd enroll kmip --key-file " + passFile + " --kmip-server " + server + " " + kmsTLSFlags + " $(disk data0)",
		config:    []string{"kmip-ca /etc/kmip/ca.pem", "kmip-cert /etc/kmip/client.pem", "kmip-key /etc/kmip/client.key"},
		tokenType: "diskcryptd-kmip",
		stop:      srv.Stop,
	})
}

// resealScenario is issue 11's fleet scenario. Boot 1 provisions a disk with a TPM2
// protector sealed to PCRs 0+7 and the network fallback fb (its server on the host,
// reached through a guestfwd), drops the passphrase, and serve --once unlocks through
// the TPM. Then a firmware update: from boot 2 on the firmware measures something new
// into PCRs 0 and 7 (the guest extends them first thing, as SeaBIOS would measure a
// new image and a new Secure Boot db). Boot 2: the TPM refuses, serve opens the volume
// through the fallback and reseals the TPM2 protector to the new values, and says so
// in its status and the audit log. Boot 3, the fallback's server stopped: the TPM
// alone unlocks it and the data written in boot 1 reads back.
func resealScenario(t *testing.T, f *fixture, fb fallback) {
	t.Helper()
	conf := "{ echo 'socket none'; echo 'audit-log /run/audit.jsonl'; echo 'token-timeout 30s'\n"
	for _, l := range fb.config {
		conf += "  echo '" + l + "'\n"
	}
	serve := conf + "  echo \"volume data $(disk data0) reseal=tpm2\"; } > /run/diskcryptd.conf\n" +
		"diskcryptd serve --once --config /run/diskcryptd.conf"
	// The new firmware's measurements, taken at every boot after the update.
	firmware := Step{Name: "firmware", Script: "pcrextend -pcr 0 -data seabios-2.0 && pcrextend -pcr 7 -data secureboot-db-2026"}
	pcrs := Step{Name: "pcrs", Script: "cat /sys/class/tpm/tpm0/pcr-sha256/0 /sys/class/tpm/tpm0/pcr-sha256/7"}
	audit := Step{Name: "audit", Script: "DISKCRYPTD_AUDIT_LOG=/run/audit.jsonl diskcryptd audit"}
	files := f.files()
	for k, v := range fb.files {
		files[k] = v
	}

	b1 := boot(t, f.m, files,
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "enroll-tpm2", Script: "diskcryptd enroll tpm2 --key-file " + passFile + " --tpm2-pcrs 0+7 $(disk data0)"},
		Step{Name: "enroll-fallback", Script: fb.enroll},
		Step{Name: "drop-passphrase", Script: "diskcryptd keyslot remove --slot 0 $(disk data0)\ndiskcryptd token list $(disk data0)"},
		Step{Name: "serve", Script: serve},
		stepWrite("data"),
		pcrs,
	)
	for _, s := range []string{"format", "enroll-tpm2", "enroll-fallback", "drop-passphrase", "write"} {
		ok(t, b1, s)
	}
	if r := ok(t, b1, "serve"); !strings.Contains(string(r.Stdout), "data: unlocked (token 0:systemd-tpm2") {
		t.Fatalf("boot 1: serve did not unlock through the TPM: %s", r)
	}
	t.Logf("boot 1 tokens:\n%s", b1.Result("drop-passphrase").Stdout)

	b2 := boot(t, f.m, fb.files, firmware, pcrs, Step{Name: "serve", Script: serve},
		Step{Name: "mapped", Script: "mapped data"}, audit)
	ok(t, b2, "firmware")
	if bytes.Equal(ok(t, b1, "pcrs").Stdout, ok(t, b2, "pcrs").Stdout) {
		t.Fatal("PCRs 0 and 7 did not change with the firmware update")
	}
	r := ok(t, b2, "serve")
	out := string(r.Stdout)
	if !strings.Contains(out, "data: unlocked (token 1:"+fb.tokenType) || !strings.Contains(out, "resealed: TPM2 token 0 (keyslots [1]) resealed as token 0") ||
		!strings.Contains(out, "sha256 PCRs 0+7") {
		t.Fatalf("boot 2: serve did not open through the fallback and reseal: %s", r)
	}
	ok(t, b2, "mapped")
	a := string(ok(t, b2, "audit").Stdout)
	for _, want := range []string{"key-release failure", "type=systemd-tpm2", "pcrs=sha256:0=", "key-release success", "type=" + fb.tokenType, "reseal success"} {
		if !strings.Contains(a, want) {
			t.Errorf("boot 2 audit log lacks %q:\n%s", want, a)
		}
	}
	t.Logf("boot 2 serve: %s", out)
	t.Logf("boot 2 audit:\n%s", a)

	fb.stop()
	b3 := boot(t, f.m, fb.files, firmware, Step{Name: "serve", Script: serve}, stepRead("data"), audit)
	r = ok(t, b3, "serve")
	if !strings.Contains(string(r.Stdout), "data: unlocked (token 0:systemd-tpm2") || strings.Contains(string(r.Stdout), "resealed") {
		t.Fatalf("boot 3 (fallback server stopped): serve did not unlock through the TPM alone: %s", r)
	}
	if got := ok(t, b3, "read").Stdout; !bytes.Equal(got, f.marker) {
		t.Fatalf("boot 3: data written in boot 1 reads back differently")
	}
	if a := string(ok(t, b3, "audit").Stdout); strings.Contains(a, "type="+fb.tokenType) {
		t.Errorf("boot 3 tried the fallback although the TPM opened the volume:\n%s", a)
	}
	t.Logf("walls: provision %s, firmware update + reseal %s, TPM alone %s", b1.Wall, b2.Wall, b3.Wall)
}
