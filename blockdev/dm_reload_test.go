package blockdev

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDMReloadTwoTargets: the table of an online re-encryption (new key before the
// boundary, old key after it) reaches the kernel as two back-to-back crypt targets
// with their own keys, offsets and IVs, flagged as secure data, and the ioctl
// buffer is wiped afterwards.
func TestDMReloadTwoTargets(t *testing.T) {
	newKey, oldKey := testKey(64), bytes.Repeat([]byte{0xa5}, 64)
	targets := []*CryptTarget{
		{Start: 0, Length: 8192, Cipher: "aes-xts-plain64", Key: newKey, Device: "254:16", Offset: 32768, SectorSize: 4096},
		{Start: 8192, Length: 90112, Cipher: "aes-xts-plain64", Key: oldKey, IVOffset: 8192, Device: "254:16", Offset: 40960, SectorSize: 4096},
	}
	var bufs [][]byte
	var got []dmTarget
	var flags uint32
	c := &dmControl{ioctl: func(cmd uintptr, buf []byte) unix.Errno {
		bufs = append(bufs, buf)
		if cmd != dmTableLoadCmd {
			t.Errorf("ioctl %s, want table load", dmOpNames[cmd])
			return unix.EINVAL
		}
		bo := byteOrder()
		flags = bo.Uint32(buf[28:])
		ts, err := decodeTargets(buf[bo.Uint32(buf[16:]):], bo.Uint32(buf[20:]))
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ts {
			x.params = bytes.Clone(x.params)
			got = append(got, x)
		}
		return 0
	}}
	if err := c.reload("data", targets, false); err != nil {
		t.Fatal(err)
	}
	if flags&dmSecureDataFlag == 0 {
		t.Errorf("table load without DM_SECURE_DATA_FLAG")
	}
	want := []string{
		"aes-xts-plain64 " + hex.EncodeToString(newKey) + " 0 254:16 32768 1 sector_size:4096",
		"aes-xts-plain64 " + hex.EncodeToString(oldKey) + " 8192 254:16 40960 1 sector_size:4096",
	}
	if len(got) != 2 {
		t.Fatalf("%d targets loaded, want 2", len(got))
	}
	for i, g := range got {
		if g.typ != "crypt" || g.start != targets[i].Start || g.length != targets[i].Length || string(g.params) != want[i] {
			t.Errorf("target %d: %s %d+%d %q", i, g.typ, g.start, g.length, strings.Replace(string(g.params), hex.EncodeToString(targets[i].Key), "<key>", 1))
		}
	}
	for _, b := range bufs {
		if bytes.Contains(b, []byte(hex.EncodeToString(newKey)[:32])) || bytes.Contains(b, []byte(hex.EncodeToString(oldKey)[:32])) {
			t.Errorf("ioctl buffer not wiped")
		}
	}
	if !bytes.Equal(newKey, testKey(64)) {
		t.Errorf("the caller's key was changed")
	}
}

// TestDMReloadChecks: targets with a gap, no targets or a bad target are refused
// before any ioctl.
func TestDMReloadChecks(t *testing.T) {
	k := testKey(64)
	good := CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: k, Device: "254:1"}
	gap := good
	gap.Start = 16
	noKey := good
	noKey.Key = nil
	for name, ts := range map[string][]*CryptTarget{
		"none":   nil,
		"gap":    {&good, &gap},
		"no key": {&noKey},
		"nil":    {nil},
	} {
		// Refused by the checks, not by a missing /dev/mapper/control.
		if err := DMReload(t.Context(), "data", ts, false); err == nil || errors.Is(err, ErrNoDeviceMapper) {
			t.Errorf("%s: not refused by the checks: %v", name, err)
		}
	}
}
