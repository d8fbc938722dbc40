package vmtests

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Guest-side constants shared by the scenarios.
const (
	passFile = "/etc/pass"     // the passphrase, a boot file (mode 0600)
	rkFile   = "/etc/recovery" // the recovery key, when the host passes it back
	// formatFlags keeps the guest's passphrase keyslot cheap under TCG.
	formatFlags = "--sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000"
	markerOff   = 16 * 4096 // byte offset of the marker inside the mapping
	markerLen   = 16 * 4096
	diskSize    = 64 << 20
)

// fixture is a data volume and the secrets the test knows about it.
type fixture struct {
	m        *Machine
	img      string // the raw disk image on the host
	pass     []byte // the passphrase
	passPath string // the passphrase in a 0600 host file
	marker   []byte // markerLen bytes of recognisable plaintext
	recovery string // the recovery key printed at enrolment
}

func newFixture(t *testing.T, e *Env) *fixture {
	t.Helper()
	m := newMachine(t, e)
	f := &fixture{m: m, img: addDisk(t, m, "data0", diskSize)}
	f.pass = []byte("correct horse " + randHex(t, 8))
	f.passPath = filepath.Join(m.Dir, "pass")
	if err := os.WriteFile(f.passPath, f.pass, 0o600); err != nil {
		t.Fatal(err)
	}
	f.marker = makeMarker(t)
	return f
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// makeMarker returns markerLen bytes of text that is unmistakable in a disk image.
func makeMarker(t *testing.T) []byte {
	id := randHex(t, 8)
	var b bytes.Buffer
	for i := 0; b.Len() < markerLen; i++ {
		fmt.Fprintf(&b, "DISKCRYPTD-VMTEST-PLAINTEXT-%s-%06d\n", id, i)
	}
	return b.Bytes()[:markerLen]
}

// files returns the boot files that carry the passphrase and the marker.
func (f *fixture) files() map[string][]byte {
	return map[string][]byte{passFile: f.pass, "/etc/marker": f.marker}
}

// Guest scripts used by several scenarios.
var (
	stepWrite = func(name string) Step {
		return Step{Name: "write", Script: fmt.Sprintf("dd if=/etc/marker of=$(mapped %s) bs=4096 seek=%d conv=fsync 2>/dev/null\nsync", name, markerOff/4096)}
	}
	stepRead = func(name string) Step {
		return Step{Name: "read", Script: fmt.Sprintf("dd if=$(mapped %s) bs=4096 skip=%d count=%d 2>/dev/null", name, markerOff/4096, markerLen/4096)}
	}
	stepMapperNode = func(name string) Step {
		return Step{Name: "mapper-node", Script: "test -b /dev/mapper/" + name}
	}
)

// provision runs the first boot of a machine: format the disk, enroll TPM2 (PCRs 0+7)
// and a recovery key, unlock with the passphrase, write the marker and lock again.
func provision(t *testing.T, e *Env, f *fixture) *Boot {
	t.Helper()
	need(t, e, "diskcryptd")
	b := boot(t, f.m, f.files(),
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "enroll-tpm2", Script: "diskcryptd enroll tpm2 --key-file " + passFile + " --tpm2-pcrs 0+7 $(disk data0)"},
		Step{Name: "enroll-recovery", Script: "diskcryptd enroll recovery --key-file " + passFile + " $(disk data0)"},
		Step{Name: "dump", Script: "diskcryptd dump --json $(disk data0)"},
		Step{Name: "unlock", Script: "diskcryptd unlock --key-file " + passFile + " $(disk data0) data"},
		stepMapperNode("data"),
		stepWrite("data"),
		Step{Name: "status", Script: "diskcryptd status --json"},
		Step{Name: "lock", Script: "diskcryptd lock data\n! test -e /dev/mapper/data"},
	)
	for _, s := range []string{"format", "enroll-tpm2", "enroll-recovery", "dump", "unlock", "write", "lock"} {
		ok(t, b, s)
	}
	if r := b.Result("mapper-node"); r.Exit != 0 {
		t.Errorf("diskcryptd unlock made no /dev/mapper/data node (the mapping was reached as /dev/dm-N)")
	}
	rk := regexp.MustCompile(recoveryKeyPattern).Find(b.Result("enroll-recovery").Stdout)
	if rk == nil {
		t.Fatalf("enroll recovery printed no recovery key: %s", b.Result("enroll-recovery"))
	}
	f.recovery = string(rk)
	dump := string(b.Result("dump").Stdout)
	if !strings.Contains(dump, "systemd-tpm2") || !strings.Contains(dump, "systemd-recovery") {
		t.Errorf("dump --json lacks the systemd-tpm2/systemd-recovery tokens:\n%s", dump)
	}
	if !strings.Contains(string(b.Result("status").Stdout), "data") {
		t.Errorf("status --json does not list the mapping: %s", b.Result("status"))
	}
	return b
}

// TestProvisionAndReboot: the first boot provisions the disk, the second unlocks it
// through the TPM alone (no passphrase in the guest) and reads the data back.
func TestProvisionAndReboot(t *testing.T) {
	e := setup(t)
	f := newFixture(t, e)
	b1 := provision(t, e, f)
	b2 := boot(t, f.m, nil,
		Step{Name: "no-secrets", Script: "! test -e " + passFile},
		Step{Name: "unlock", Script: "diskcryptd unlock $(disk data0) data"},
		stepRead("data"),
		Step{Name: "status", Script: "diskcryptd status --json"},
	)
	ok(t, b2, "no-secrets")
	ok(t, b2, "unlock")
	if got := ok(t, b2, "read").Stdout; !bytes.Equal(got, f.marker) {
		t.Fatalf("data after reboot differs: read %d bytes, first 64: %q", len(got), got[:min(64, len(got))])
	}
	t.Logf("boot 1 (provision) wall %s, boot 2 (TPM unlock) wall %s, guest ready at %.2fs, TPM unlock done at %.2fs uptime",
		b1.Wall, b2.Wall, b2.Ready, b2.Result("unlock").Uptime)
	t.Logf("status after TPM unlock: %s", b2.Result("status").Stdout)
}

// TestAtRest: the raw disk image holds neither the plaintext nor the volume key; the
// data region holds the marker's XTS ciphertext under that key.
func TestAtRest(t *testing.T) {
	e := setup(t)
	f := newFixture(t, e)
	provision(t, e, f)
	b := boot(t, f.m, map[string][]byte{passFile: f.pass},
		Step{Name: "volume-key", Script: "diskcryptd dump --volume-key --key-file " + passFile + " $(disk data0)"})
	guestDump := ok(t, b, "volume-key").Stdout

	ctx := t.Context()
	vk, err := VolumeKey(ctx, f.img, f.passPath, f.m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(vk) != 64 {
		t.Fatalf("volume key has %d bytes; want 64 (aes-xts-plain64, 512 bits)", len(vk))
	}
	norm := strings.ToLower(regexp.MustCompile(`[^0-9a-fA-F]`).ReplaceAllString(string(guestDump), ""))
	if !strings.Contains(norm, hex.EncodeToString(vk)) {
		t.Errorf("diskcryptd dump --volume-key in the guest and cryptsetup on the host disagree")
	}
	found, err := ScanFile(f.img, f.marker[:48], f.marker[markerLen-48:], vk, vk[:32], vk[32:], f.pass)
	if err != nil {
		t.Fatal(err)
	}
	for i, what := range []string{"plaintext marker (start)", "plaintext marker (end)", "volume key", "volume key (first half)", "volume key (second half)", "passphrase"} {
		if found[i] {
			t.Errorf("the raw image contains the %s", what)
		}
	}
	seg, err := ReadSegment(ctx, f.img)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := ReadAt(f.img, seg.Offset+markerOff, markerLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := CryptRange(seg, vk, ct, markerOff, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ct, f.marker) {
		t.Errorf("the data region does not decrypt to the marker with the volume key (segment %+v)", *seg)
	}
	t.Logf("image %s: %d MiB scanned, no plaintext, no key; ciphertext at %d decrypts to the marker", filepath.Base(f.img), diskSize>>20, seg.Offset+markerOff)
}

// TestTamper: after an extra extend of PCR 7 the TPM refuses to unseal, the volume
// stays locked and the failure names the PCR policy; the recovery key then unlocks it.
func TestTamper(t *testing.T) {
	e := setup(t)
	f := newFixture(t, e)
	provision(t, e, f)
	b := boot(t, f.m, map[string][]byte{rkFile: []byte(f.recovery)},
		Step{Name: "extend", Script: "pcrextend -pcr 7 -data evil-bootloader"},
		Step{Name: "unlock", Script: "diskcryptd unlock $(disk data0) data"},
		Step{Name: "still-locked", Script: "! test -e /dev/mapper/data && ! mapped data 2>/dev/null"},
		// The daemon tries too, keeps the volume locked, and its status says why.
		Step{Name: "status", Script: "printf 'tpm2-device /dev/tpmrm0\\nsocket /run/dcd.sock\\nvolume data %s\\n' $(disk data0) > /run/dcd.conf\n" +
			"diskcryptd serve --config /run/dcd.conf >/run/dcd.log 2>&1 &\n" +
			"for i in $(seq 1 100); do diskcryptd status --json --socket /run/dcd.sock | grep -q '\"state\": \"locked\"' && break; sleep 0.2; done\n" +
			"diskcryptd status --socket /run/dcd.sock\ndiskcryptd status --json --socket /run/dcd.sock\nkill %1"},
		Step{Name: "recovery", Script: "diskcryptd unlock --key-file " + rkFile + " $(disk data0) data"},
		stepRead("data"),
	)
	ok(t, b, "extend")
	u := b.Result("unlock")
	if u.Exit == 0 {
		t.Fatalf("unlock through the TPM succeeded after PCR 7 changed: %s", u)
	}
	why := strings.ToLower(string(u.Stdout) + string(u.Stderr))
	if !strings.Contains(why, "pcr") && !strings.Contains(why, "policy") {
		t.Errorf("the refusal does not say the PCRs/policy changed: %s", u)
	}
	ok(t, b, "still-locked")
	t.Logf("refused unlock (exit %d): %s", u.Exit, strings.TrimSpace(string(u.Stderr)))
	st := ok(t, b, "status").Stdout
	t.Logf("status while locked: %s", st)
	if !bytes.Contains(st, []byte(`"state": "locked"`)) || !bytes.Contains(st, []byte("PCRs")) {
		t.Errorf("daemon status does not say the volume is locked because the PCRs changed:\n%s", st)
	}
	ok(t, b, "recovery")
	if got := ok(t, b, "read").Stdout; !bytes.Equal(got, f.marker) {
		t.Fatalf("data after recovery unlock differs")
	}
}
