package reencrypt

import (
	"bytes"
	"testing"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/luks2"
)

// TestOnlineTargets: the table loaded after each hotzone maps [0, end) with the
// new key and [end, total) with the old one, each at its own place on the backing
// device and with the IV the LUKS2 segments give it; at 0 and at the end it is
// one target, the volume's offline table.
func TestOnlineTargets(t *testing.T) {
	const dataOff, total = 16 << 20, 48 << 20
	p := &plan{dataOffset: dataOff, total: total,
		prev:  luks2.Segment{Encryption: "aes-xts-plain64", SectorSize: 4096, IVTweak: 0},
		final: luks2.Segment{Encryption: "aes-xts-plain64", SectorSize: 4096, IVTweak: 0}}
	e := &engine{p: p, o: &Options{Online: &Online{Name: "data"}}}
	tbl := &onlineTable{base: blockdev.CryptTarget{Cipher: "aes-xts-plain64", Device: "254:16", Flags: blockdev.CryptFlags(0)}}
	oldVK, newVK := luks2.NewVolumeKey(bytes.Repeat([]byte{1}, 64)), luks2.NewVolumeKey(bytes.Repeat([]byte{2}, 64))
	type tgt struct {
		start, length, offset, iv uint64
		key                       byte
	}
	for _, tc := range []struct {
		end  uint64
		want []tgt
	}{
		{0, []tgt{{0, total / 512, dataOff / 512, 0, 1}}},
		{4 << 20, []tgt{{0, 8192, dataOff / 512, 0, 2}, {8192, total/512 - 8192, dataOff/512 + 8192, 8192, 1}}},
		{total, []tgt{{0, total / 512, dataOff / 512, 0, 2}}},
	} {
		got := e.onlineTargets(tbl, tc.end, oldVK, newVK)
		if len(got) != len(tc.want) {
			t.Fatalf("end %d: %d targets, want %d", tc.end, len(got), len(tc.want))
		}
		for i, g := range got {
			w := tc.want[i]
			if g.Start != w.start || g.Length != w.length || g.Offset != w.offset || g.IVOffset != w.iv || g.Key[0] != w.key || g.SectorSize != 4096 || g.Device != "254:16" {
				t.Errorf("end %d target %d: %v, want %+v", tc.end, i, g, w)
			}
			if err := g.Validate(); err != nil {
				t.Errorf("end %d target %d: %v", tc.end, i, err)
			}
		}
	}
}
