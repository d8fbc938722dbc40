package vmtests

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemo is `make demo`: a short transcript of one server's life — provisioning,
// a reboot that unlocks on its own, the disk at rest, and a tampered boot refused.
// Run it through contrib/demo.sh, which prints the transcript without test noise.
func TestDemo(t *testing.T) {
	if !*demoFlag {
		t.Skip("the demo runs with -vm.demo (make demo); the other tests cover the same steps")
	}
	e := setup(t)
	need(t, e, "diskcryptd")
	needHost(t, "cryptsetup")
	w := io.Writer(os.Stdout)
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	show := func(b *Boot) {
		for _, r := range b.Results {
			for _, line := range strings.Split(strings.TrimSpace(r.Script), "\n") {
				say("  # %s", line)
			}
			for _, out := range [][]byte{r.Stderr, r.Stdout} {
				s := strings.TrimRight(string(out), "\n")
				if s == "" || !isText(out) {
					continue
				}
				for _, line := range strings.Split(s, "\n") {
					say("    %s", line)
				}
			}
			if r.Exit != 0 {
				say("    [exit status %d]", r.Exit)
			}
		}
	}
	f := newFixture(t, e)
	say("\n== diskcryptd demo: a server (QEMU %s, kernel %s) with a software TPM and a %d MiB data disk (/dev/vda)", e.Accel, e.Kernel.Release, diskSize>>20)

	say("\n-- boot 1: provisioning (the passphrase is in /etc/pass for this boot only)")
	b1 := boot(t, f.m, f.files(),
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " /dev/vda"},
		Step{Name: "enroll-tpm2", Script: "diskcryptd enroll tpm2 --key-file " + passFile + " --tpm2-pcrs 0+7 /dev/vda"},
		Step{Name: "enroll-recovery", Script: "diskcryptd enroll recovery --key-file " + passFile + " /dev/vda"},
		Step{Name: "unlock", Script: "diskcryptd unlock --key-file " + passFile + " /dev/vda data"},
		Step{Name: "write", Script: "dd if=/etc/marker of=/dev/mapper/data bs=4096 seek=16 conv=fsync 2>/dev/null\nhead -c 48 /etc/marker; echo"},
		Step{Name: "status", Script: "diskcryptd status"},
	)
	show(b1)
	for _, s := range []string{"format", "enroll-tpm2", "enroll-recovery", "unlock", "write"} {
		ok(t, b1, s)
	}
	rk := regexp.MustCompile(recoveryKeyPattern).Find(b1.Result("enroll-recovery").Stdout)
	if rk == nil {
		t.Fatalf("no recovery key printed")
	}
	f.recovery = string(rk)
	say("  (boot took %s)", b1.Wall.Round(100*time.Millisecond))

	say("\n-- boot 2: reboot, no passphrase anywhere: the TPM unlocks the disk")
	b2 := boot(t, f.m, nil,
		Step{Name: "unlock", Script: "diskcryptd unlock /dev/vda data"},
		Step{Name: "status", Script: "diskcryptd status"},
		Step{Name: "read", Script: "dd if=/dev/mapper/data bs=4096 skip=16 count=16 2>/dev/null | head -c 48; echo"},
	)
	show(b2)
	ok(t, b2, "unlock")
	if got := ok(t, b2, "read").Stdout; !bytes.HasPrefix(f.marker, bytes.TrimSuffix(got, []byte("\n"))) || len(got) < 40 {
		t.Fatalf("data after reboot differs")
	}
	say("  => unlocked automatically %.1f s after the kernel started; data intact", b2.Result("unlock").Uptime)

	say("\n-- at rest: the host scans the raw disk image")
	vk, err := VolumeKey(t.Context(), f.img, f.passPath, f.m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	found, err := ScanFile(f.img, f.marker[:48], vk, vk[:32], vk[32:])
	if err != nil {
		t.Fatal(err)
	}
	say("  plaintext marker found in image: %v", found[0])
	say("  volume key (%d bytes, from cryptsetup luksDump --dump-volume-key) found in image: %v", len(vk), found[1] || found[2] || found[3])
	if found[0] || found[1] || found[2] || found[3] {
		t.Fatalf("secrets at rest")
	}

	say("\n-- boot 3: a tampered boot (an extra measurement into PCR 7 before unlocking)")
	b3 := boot(t, f.m, map[string][]byte{rkFile: rk},
		Step{Name: "extend", Script: "pcrextend -pcr 7 -data evil-bootloader"},
		Step{Name: "unlock", Script: "diskcryptd unlock /dev/vda data"},
		Step{Name: "status", Script: "diskcryptd status"},
		Step{Name: "recovery", Script: "diskcryptd unlock --key-file " + rkFile + " /dev/vda data"},
		Step{Name: "read", Script: "dd if=/dev/mapper/data bs=4096 skip=16 count=16 2>/dev/null | head -c 48; echo"},
	)
	show(b3)
	if b3.Result("unlock").Exit == 0 {
		t.Fatalf("tampered boot unlocked through the TPM")
	}
	ok(t, b3, "recovery")
	say("  => TPM refused the tampered boot; the recovery key (typed by a human) still opens the disk")
	say("\n== demo done: provisioning, automatic unlock after reboot, nothing readable at rest, tampered boot refused\n")
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\t' {
			return false
		}
	}
	return true
}
