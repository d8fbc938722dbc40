package vmtests

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// unlockInterval is one volume's line of `diskcryptd serve --once`: when the daemon
// began unlocking it, its keyslot attempt, and when it was mapped, in seconds from the
// daemon's start.
type unlockInterval struct {
	name                    string
	started, ksStart, ksEnd float64
	mapped                  float64
}

// unlockLine matches "vol3: unlocked (token 0:systemd-tpm2, started 0.012s, keyslot
// 0.400s-0.410s, 1.230s)".
var unlockLine = regexp.MustCompile(`^(\S+): unlocked \(token \S+, started ([0-9.]+)s, keyslot ([0-9.]+)s-([0-9.]+)s, ([0-9.]+)s\)$`)

// parseUnlockLines reads the lines of volumes named with prefix; any such volume not
// unlocked is an error.
func parseUnlockLines(out, prefix string) ([]unlockInterval, error) {
	var iv []unlockInterval
	for _, line := range strings.Split(out, "\n") {
		name, _, found := strings.Cut(line, ": ")
		if !found || !strings.HasPrefix(name, prefix) {
			continue
		}
		m := unlockLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("volume %s not unlocked: %s", name, line)
		}
		var f [4]float64
		for i := range f {
			v, err := strconv.ParseFloat(m[i+2], 64)
			if err != nil {
				return nil, fmt.Errorf("%q: %v", line, err)
			}
			f[i] = v
		}
		iv = append(iv, unlockInterval{name: m[1], started: f[0], ksStart: f[1], ksEnd: f[2], mapped: f[3]})
	}
	return iv, nil
}

// checkConcurrent fails unless every volume's unlock interval [started, mapped]
// overlaps another's: a daemon that unlocked volumes one after the other would give
// disjoint intervals. This is a logical property of the schedule, not a timing bound.
func checkConcurrent(iv []unlockInterval) error {
	if len(iv) < 2 {
		return nil
	}
	for i, a := range iv {
		overlaps := false
		for j, b := range iv {
			if i != j && a.started < b.mapped && b.started < a.mapped {
				overlaps = true
				break
			}
		}
		if !overlaps {
			return fmt.Errorf("%s unlocked in [%.3fs, %.3fs], overlapping no other volume: the unlocks ran one after the other", a.name, a.started, a.mapped)
		}
	}
	return nil
}

func TestCheckConcurrent(t *testing.T) {
	concurrent := "vol0: unlocked (token 0:systemd-tpm2, started 0.010s, keyslot 0.300s-0.310s, 0.400s)\n" +
		"vol1: unlocked (token 0:systemd-tpm2, started 0.011s, keyslot 0.600s-0.610s, 0.700s)\n" +
		"other line\n"
	serial := "vol0: unlocked (token 0:systemd-tpm2, started 0.010s, keyslot 0.300s-0.310s, 0.400s)\n" +
		"vol1: unlocked (token 0:systemd-tpm2, started 0.400s, keyslot 0.600s-0.610s, 0.700s)\n"
	iv, err := parseUnlockLines(concurrent, "vol")
	if err != nil || len(iv) != 2 || iv[1].ksStart != 0.6 {
		t.Fatalf("parse: %+v %v", iv, err)
	}
	if err := checkConcurrent(iv); err != nil {
		t.Errorf("concurrent: %v", err)
	}
	iv, _ = parseUnlockLines(serial, "vol")
	if err := checkConcurrent(iv); err == nil {
		t.Errorf("serial unlocks passed the check")
	}
	if _, err := parseUnlockLines("vol2: locked: no token\n", "vol"); err == nil {
		t.Errorf("a locked volume parsed")
	}
}
