package vmtests

import (
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchBootFlag runs TestSystemdBootNumbers: three more systemd boots, for figures only.
var benchBootFlag = flag.Bool("vm.bench", false, "run TestSystemdBootNumbers (make bench-boot)")

// unitTimes is one unit's ActiveState and its monotonic timestamps (µs since boot).
type unitTimes struct {
	state        string
	start, ready int64 // InactiveExitTimestampMonotonic, ActiveEnterTimestampMonotonic
}

// stepUnitTimes prints "UNIT STATE START READY" for each unit matching the patterns.
func stepUnitTimes(name string, patterns ...string) Step {
	return Step{Name: name, Script: `for u in $(systemctl list-units --all --plain --no-legend ` + strings.Join(patterns, " ") + ` | awk '{print $1}'); do
	echo "$u $(systemctl show -p ActiveState --value $u) $(systemctl show -p InactiveExitTimestampMonotonic --value $u) $(systemctl show -p ActiveEnterTimestampMonotonic --value $u)"
done`}
}

func parseUnitTimes(t *testing.T, s string) map[string]unitTimes {
	t.Helper()
	m := map[string]unitTimes{}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var u string
		var ut unitTimes
		if _, err := fmt.Sscan(line, &u, &ut.state, &ut.start, &ut.ready); err != nil {
			t.Errorf("unit times %q: %v", line, err)
			continue
		}
		m[u] = ut
	}
	return m
}

// span returns the earliest start and the latest ready among units, in seconds since
// boot, and how many are active.
func span(m map[string]unitTimes) (first, last float64, active int) {
	first = -1
	for _, ut := range m {
		if ut.state != "active" {
			continue
		}
		active++
		if s := float64(ut.start) / 1e6; first < 0 || s < first {
			first = s
		}
		last = max(last, float64(ut.ready)/1e6)
	}
	return first, last, active
}

// TestSystemdBootNumbers measures boot to "all volumes unlocked" under systemd for 8
// data disks: once by diskcryptd.service, once by systemd-cryptsetup through crypttab
// (tpm2-device=auto), on the same machine, the same disks and the same TPM2 tokens
// (written by diskcryptd, PCR 7). It reports the figures and the daemon's memory;
// wall-clock figures are not asserted. TestSystemd reports the 1-disk figures.
func TestSystemdBootNumbers(t *testing.T) {
	if !*benchBootFlag {
		t.Skip("boot figures run with -vm.bench (make bench-boot); TestSystemd reports the 1-disk figures")
	}
	const n = 8
	e, img := setupSystemd(t)
	m := newSystemdMachine(t, e, img)
	var disks []string
	for i := range n {
		s := fmt.Sprintf("n%d", i)
		addDisk(t, m, s, 32<<20)
		disks = append(disks, s)
	}
	pass := []byte("initial " + randHex(t, 8))
	prov := `rm -f /etc/diskcryptd/diskcryptd.conf /run/vmtest/crypttab; mkdir -p /etc/diskcryptd
for s in ` + strings.Join(disks, " ") + `; do
	dev=$(disk $s)
	diskcryptd format --key-file /run/vmtest/initial.key ` + sdFormat + ` $dev
	diskcryptd enroll tpm2 --key-file /run/vmtest/initial.key --tpm2-pcrs 7 $dev >/dev/null
	uuid=$(diskcryptd dump --json $dev | jq -r .uuid)
	echo "volume $s UUID=$uuid" >> /etc/diskcryptd/diskcryptd.conf
	echo "$s UUID=$uuid none tpm2-device=auto,headless=true" >> /etc/crypttab.vmtest
done
cat /etc/diskcryptd/diskcryptd.conf`
	b1 := sdBoot(t, m, map[string][]byte{"/run/vmtest/initial.key": pass}, Step{Name: "provision", Script: prov})
	ok(t, b1, "provision")
	t.Logf("boot 1 (provision %d disks): wall %s", n, b1.Wall.Round(time.Millisecond))

	// Boot 2: diskcryptd.service unlocks all 8; then hand the disks to crypttab.
	b2 := sdBoot(t, m, nil,
		stepUnitTimes("times", "diskcryptd.service"),
		Step{Name: "status", Script: "systemctl show -p StatusText --value diskcryptd\ndiskcryptd status --json | jq -c '.daemon[] | [.name, .state, .seconds, .keyslot_start, .keyslot_end]' 2>/dev/null || diskcryptd status --json"},
		Step{Name: "rss", Script: "grep -E '^(VmRSS|VmHWM)' /proc/$(systemctl show -p MainPID --value diskcryptd)/status"},
		Step{Name: "switch", Script: "systemctl disable -q diskcryptd.service\nmv /etc/crypttab.vmtest /etc/crypttab"},
	)
	ok(t, b2, "switch")
	dcd := parseUnitTimes(t, out(t, b2, "times"))
	if st := strings.TrimSpace(out(t, b2, "status")); !strings.HasPrefix(st, fmt.Sprintf("%d of %d volumes unlocked", n, n)) {
		t.Errorf("diskcryptd status after boot:\n%s", st)
	} else {
		t.Logf("diskcryptd per volume [name state seconds keyslot_start keyslot_end]:\n%s", st)
	}
	rss := strings.Join(strings.Fields(out(t, b2, "rss")), " ")

	// Boot 3: systemd-cryptsetup opens the same 8 through crypttab.
	b3 := sdBoot(t, m, nil,
		stepUnitTimes("times", "'systemd-cryptsetup@*'", "cryptsetup.target"),
		Step{Name: "mapped", Script: "ls /dev/mapper"},
	)
	sdc := parseUnitTimes(t, out(t, b3, "times"))
	mapped := out(t, b3, "mapped")
	for _, s := range disks {
		if !strings.Contains(mapped, s) {
			t.Errorf("systemd-cryptsetup did not open %s: /dev/mapper has %s", s, mapped)
		}
	}
	delete(sdc, "cryptsetup.target")
	d := dcd["diskcryptd.service"]
	if d.state != "active" {
		t.Fatalf("diskcryptd.service is %s", d.state)
	}
	f, l, active := span(sdc)
	if active != n {
		t.Errorf("%d of %d systemd-cryptsetup units active: %v", active, n, sdc)
	}
	t.Logf("%d disks, boot to all volumes unlocked (s since kernel start): diskcryptd.service %.2f (unit start %.2f, %.2fs to ready); systemd-cryptsetup %.2f (first unit start %.2f, %.2fs to the last ready); ratio of unlock spans diskcryptd/systemd-cryptsetup %.2f",
		n, float64(d.ready)/1e6, float64(d.start)/1e6, float64(d.ready-d.start)/1e6, l, f, l-f, (float64(d.ready-d.start)/1e6)/(l-f))
	t.Logf("diskcryptd memory after unlocking %d volumes: %s", n, rss)
}
