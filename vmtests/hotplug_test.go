package vmtests

import (
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/luks2"
)

// waitStatus is guest shell that polls `diskcryptd status` until the daemon reports
// volume in state (an extended regexp for the rest of the line: state and reason; up
// to about 2 minutes), printing the daemon's log if it never does.
func waitStatus(volume, state string) string {
	return "i=0\nuntil diskcryptd status --socket /run/diskcryptd.sock 2>/dev/null | grep -qE '^" + volume + " +" + state + "'; do\n" +
		"\ti=$((i+1)); if [ $i -gt 600 ]; then diskcryptd status --socket /run/diskcryptd.sock; cat /run/serve.log; exit 1; fi; sleep 0.2\ndone\n" +
		"diskcryptd status --socket /run/diskcryptd.sock\n"
}

// TestHotplug: `diskcryptd serve` (not --once) keeps running after boot; a TPM-enrolled
// disk plugged in later through the QEMU monitor (device_add) is unlocked from the
// kernel's uevent; `diskcryptd lock` shows as locked; SIGHUP retries it; pulling the
// disk (device_del) puts the volume back to waiting with the reason.
func TestHotplug(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	m := newMachine(t, e)
	pass := []byte("hot plug " + randHex(t, 8))
	img := addDisk(t, m, "hot0", 32<<20)
	b1 := boot(t, m, map[string][]byte{passFile: pass},
		Step{Name: "provision", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk hot0)\n" +
			"diskcryptd enroll tpm2 --key-file " + passFile + " --tpm2-pcrs 0+7 $(disk hot0)"})
	ok(t, b1, "provision")
	v, err := luks2.OpenFile(img, luks2.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	uuid := v.Metadata().UUID
	v.Close()

	// Boot 2: the disk is not there at boot; the host plugs it in when the daemon is
	// waiting for it, and pulls it out at the end.
	disk := m.Disks[0]
	m.Disks = nil
	m.HotplugDisks = []Disk{disk}
	m.MonitorActions = []MonitorAction{
		{When: "@@HOTPLUG-ADD@@", Command: HotplugAdd(disk)},
		{When: "@@HOTPLUG-DEL@@", Command: HotplugDel(disk)},
	}
	b2 := boot(t, m, nil,
		Step{Name: "serve", Script: "{ echo 'socket /run/diskcryptd.sock'; echo 'tpm2-device /dev/tpmrm0'; echo 'device-timeout 2s'\n" +
			"  echo 'volume hot0 UUID=" + uuid + "'; } > /run/diskcryptd.conf\n" +
			"diskcryptd --verbose serve --config /run/diskcryptd.conf >/run/serve.log 2>&1 &\necho $! >/run/serve.pid\n" +
			waitStatus("hot0", "waiting.*not present")},
		Step{Name: "pcr15-before", Script: "diskcryptd pcr read 15"},
		Step{Name: "plug", Script: "echo @@HOTPLUG-ADD@@ >/dev/console\n" + waitStatus("hot0", "unlocked") + "mapped hot0"},
		Step{Name: "pcr15-after", Script: "diskcryptd pcr read 15"},
		Step{Name: "lock", Script: "diskcryptd lock hot0\n" + waitStatus("hot0", "locked")},
		Step{Name: "sighup", Script: "kill -HUP $(cat /run/serve.pid)\n" + waitStatus("hot0", "unlocked") + "mapped hot0"},
		Step{Name: "unplug", Script: "echo @@HOTPLUG-DEL@@ >/dev/console\n" + waitStatus("hot0", "waiting") + "cat /run/serve.log"},
	)
	for _, s := range []string{"serve", "plug", "lock", "sighup", "unplug"} {
		r := ok(t, b2, s)
		t.Logf("%s:\n%s", s, r.Stdout)
	}
	// serve measures the volume into PCR 15 by default when a TPM is present.
	before, after := string(ok(t, b2, "pcr15-before").Stdout), string(ok(t, b2, "pcr15-after").Stdout)
	t.Logf("PCR 15 before the unlock: %s; after: %s", strings.TrimSpace(before), strings.TrimSpace(after))
	if !strings.Contains(before, strings.Repeat("0", 64)) || before == after {
		t.Errorf("PCR 15 was not extended by the unlock: before %q, after %q", before, after)
	}
	if out := string(b2.Result("unplug").Stdout); !strings.Contains(out, "still maps it") {
		t.Errorf("after the disk was pulled, the status does not say the mapping is left:\n%s", out)
	}
	if out := string(b2.Result("serve").Stdout); !strings.Contains(out, "not present") {
		t.Errorf("before the disk was plugged in, the status does not say it is awaited:\n%s", out)
	}
}
