package vmtests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// needHost skips (or under CI fails) when a host tool is missing.
func needHost(t *testing.T, tools ...string) {
	t.Helper()
	testpeer.Require(t, tools...)
}

// hostEnroll formats img with the host's cryptsetup and enrolls systemd-cryptenroll's
// TPM2 token against the machine's own swtpm state (PCR 16: firmware leaves it zero in
// the guest and startup-clear leaves it zero on the host, so the policy holds in both).
func hostEnroll(ctx context.Context, t *testing.T, m *Machine, img, passPath string) {
	t.Helper()
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run("cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--sector-size", "4096", "--key-file", passPath, img)
	dir := filepath.Join(m.Dir, "host-tpm")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	// The tss2 swtpm TCTI finds the control socket at SOCKET.ctrl.
	p, err := startSwtpm(ctx, m.TPMState, sock+".ctrl", filepath.Join(dir, "swtpm.log"), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	run("systemd-cryptenroll", "--unlock-key-file="+passPath, "--tpm2-device=swtpm:path="+sock, "--tpm2-pcrs=16", img)
}

// TestInterop: a volume made by cryptsetup and enrolled by systemd-cryptenroll on the
// host (against this machine's swtpm state) unlocks in the guest through diskcryptd
// and shows the plaintext the host put there; a volume diskcryptd formats in the guest
// is accepted by the host's cryptsetup with the recovery key, and its data, decrypted
// on the host with xts/ and the volume key cryptsetup reports, is what the guest wrote.
func TestInterop(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	needHost(t, "cryptsetup", "systemd-cryptenroll")
	f := newFixture(t, e) // data0: made by cryptsetup + systemd-cryptenroll
	ours := addDisk(t, f.m, "data1", diskSize)
	ctx := t.Context()

	hostEnroll(ctx, t, f.m, f.img, f.passPath)
	seg, err := ReadSegment(ctx, f.img)
	if err != nil {
		t.Fatal(err)
	}
	vk, err := VolumeKey(ctx, f.img, f.passPath, f.m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ct := bytes.Clone(f.marker)
	if err := CryptRange(seg, vk, ct, markerOff, true); err != nil {
		t.Fatal(err)
	}
	if err := WriteAt(f.img, seg.Offset+markerOff, ct); err != nil {
		t.Fatal(err)
	}

	b := boot(t, f.m, f.files(),
		Step{Name: "unlock-systemd", Script: "diskcryptd unlock $(disk data0) sd"},
		Step{Name: "read-systemd", Script: fmt.Sprintf("dd if=$(mapped sd) bs=4096 skip=%d count=%d 2>/dev/null", markerOff/4096, markerLen/4096)},
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data1)"},
		Step{Name: "enroll-recovery", Script: "diskcryptd enroll recovery --key-file " + passFile + " $(disk data1) >/run/rk\ncat /run/rk\ngrep -oE '" + recoveryKeyPattern + "' /run/rk | tr -d '\\n' >/tmp/rk"},
		Step{Name: "unlock-recovery", Script: "diskcryptd unlock --key-file /tmp/rk $(disk data1) ours"},
		Step{Name: "write", Script: fmt.Sprintf("dd if=/etc/marker of=$(mapped ours) bs=4096 seek=%d conv=fsync 2>/dev/null\nsync", markerOff/4096)},
		Step{Name: "lock", Script: "diskcryptd lock ours\ndiskcryptd lock sd"},
	)
	ok(t, b, "unlock-systemd")
	if got := ok(t, b, "read-systemd").Stdout; !bytes.Equal(got, f.marker) {
		t.Errorf("the cryptsetup/systemd volume, unlocked by diskcryptd through its systemd-tpm2 token, does not show the plaintext the host wrote")
	}
	for _, s := range []string{"format", "enroll-recovery", "unlock-recovery", "write", "lock"} {
		ok(t, b, s)
	}
	rk := regexp.MustCompile(recoveryKeyPattern).Find(b.Result("enroll-recovery").Stdout)
	if rk == nil {
		t.Fatalf("no recovery key printed: %s", b.Result("enroll-recovery"))
	}
	rkPath := filepath.Join(f.m.Dir, "recovery")
	if err := os.WriteFile(rkPath, rk, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "cryptsetup", "open", "--test-passphrase", "--key-file", rkPath, ours).CombinedOutput(); err != nil {
		t.Fatalf("host cryptsetup refuses the recovery key of a diskcryptd volume: %v\n%s", err, out)
	}
	seg1, err := ReadSegment(ctx, ours)
	if err != nil {
		t.Fatal(err)
	}
	if seg1.Encryption != "aes-xts-plain64" || seg1.SectorSize != 4096 {
		t.Errorf("diskcryptd segment %+v; want aes-xts-plain64 with 4096-byte sectors", *seg1)
	}
	vk1, err := VolumeKey(ctx, ours, rkPath, f.m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := ReadAt(ours, seg1.Offset+markerOff, markerLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := CryptRange(seg1, vk1, data, markerOff, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, f.marker) {
		t.Errorf("the bytes the guest wrote through diskcryptd's mapping do not decrypt on the host as cryptsetup's mapping would read them")
	}
}

// manyDisks is the number of data disks TestManyDisks unlocks at once.
const manyDisks = 8

// TestManyDisks: eight TPM-enrolled data disks unlock in one boot, concurrently (each
// volume's unlock interval overlaps another's); the test reports the time from starting
// diskcryptd to the last mapping.
func TestManyDisks(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	m := newMachine(t, e)
	pass := []byte("many disks " + randHex(t, 8))
	var prov, unlock strings.Builder
	prov.WriteString("for s in")
	for i := range manyDisks {
		addDisk(t, m, fmt.Sprintf("data%d", i), 32<<20)
		fmt.Fprintf(&prov, " data%d", i)
	}
	prov.WriteString("; do\n\tdiskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk $s)\n" +
		"\tdiskcryptd enroll tpm2 --key-file " + passFile + " --tpm2-pcrs 0+7 $(disk $s)\ndone")
	b1 := boot(t, m, map[string][]byte{passFile: pass}, Step{Name: "provision", Script: prov.String()})
	ok(t, b1, "provision")

	// One daemon pass unlocks every disk in parallel (diskcryptd serve --once); it
	// reports, per volume, the seconds from its start to that volume's mapping.
	unlock.WriteString("{ echo 'socket none'; echo 'tpm2-device /dev/tpmrm0'\n")
	for i := range manyDisks {
		fmt.Fprintf(&unlock, "  echo \"volume vol%d $(disk data%d)\"\n", i, i)
	}
	unlock.WriteString("} > /run/diskcryptd.conf\ndiskcryptd serve --once --config /run/diskcryptd.conf\n")
	b2 := boot(t, m, nil,
		Step{Name: "unlock-all", Script: unlock.String()},
		Step{Name: "mapped", Script: "for i in $(seq 0 " + strconv.Itoa(manyDisks-1) + "); do mapped vol$i; done"},
		Step{Name: "status", Script: "diskcryptd status"},
	)
	r := ok(t, b2, "unlock-all")
	iv, err := parseUnlockLines(string(r.Stdout), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if len(iv) != manyDisks {
		t.Fatalf("%d of %d volumes reported unlocked: %s", len(iv), manyDisks, r)
	}
	ok(t, b2, "mapped")
	// The claim "in parallel" is checked, not timed: every volume's unlock overlaps
	// another's. TPM unseals are serialized (one TPM); keyslots and mappings are not.
	if err := checkConcurrent(iv); err != nil {
		t.Error(err)
	}
	var secs []float64
	for _, v := range iv {
		secs = append(secs, v.mapped)
		t.Logf("%s: started %.3fs, keyslot %.3fs-%.3fs, mapped %.3fs", v.name, v.started, v.ksStart, v.ksEnd, v.mapped)
	}
	sort.Float64s(secs)
	first := time.Duration(secs[0] * float64(time.Second))
	last := time.Duration(secs[len(secs)-1] * float64(time.Second))
	msg := fmt.Sprintf("%d disks unlocked through the TPM by one diskcryptd serve --once, concurrently (unlock intervals overlap; TPM unseals serialized): first mapping %s after diskcryptd started, last %s (%s, %d vCPUs)",
		manyDisks, first.Round(10*time.Millisecond), last.Round(10*time.Millisecond), e.Accel, m.CPUs)
	t.Log(msg)
	fmt.Println("vmtests:", msg)
	t.Logf("status:\n%s", b2.Result("status").Stdout)
}

// TestBlockdevGuest runs the blockdev package's device-mapper tests (TestDM*) inside
// the guest, where dm-mod and dm-crypt are loaded, against a scratch virtio disk.
func TestBlockdevGuest(t *testing.T) {
	e := setup(t)
	need(t, e, "blockdev.test")
	m := newMachine(t, e)
	m.Extra = map[string]string{"/bin/blockdev.test": testBinaries["blockdev.test"]}
	addDisk(t, m, "scratch", diskSize)
	b := boot(t, m, nil, Step{Name: "blockdev.test",
		Script: "cd /tmp\nDISKCRYPTD_TEST_DISK=$(disk scratch) blockdev.test -test.run TestDM -test.v"})
	r := b.Result("blockdev.test")
	t.Logf("guest output:\n%s%s", r.Stdout, r.Stderr)
	if r.Exit != 0 {
		t.Fatalf("blockdev.test failed in the guest (exit %d)", r.Exit)
	}
	if !strings.Contains(string(r.Stdout), "--- PASS") {
		t.Errorf("blockdev.test ran no test")
	}
	// TestDMNoControl is the host's test (it skips where device-mapper exists); the
	// live ones must all run here.
	if strings.Contains(string(r.Stdout), "--- SKIP: TestDMLive") {
		t.Errorf("a live device-mapper test skipped in the guest, where it must run")
	}
	if !strings.Contains(string(r.Stdout), "--- PASS: TestDMLive") {
		t.Errorf("no live device-mapper test passed in the guest")
	}
}
