package blockdev

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Expected params follow cryptsetup's get_dm_crypt_params layout:
// "<cipher> <hexkey> <iv_offset> <device> <offset>[ <#opts> <opts>]", options
// in the order allow_discards same_cpu_crypt submit_from_crypt_cpus
// no_read_workqueue no_write_workqueue, then sector_size:N, and the option
// count includes sector_size; as in `dmsetup table --showkeys` of a LUKS2
// mapping, e.g. "0 65536 crypt aes-xts-plain64 <key> 0 7:0 32768 1 sector_size:4096".
func TestCryptTargetParams(t *testing.T) {
	key := testKey(64)
	hk := hex.EncodeToString(key)
	tests := []struct {
		name string
		t    CryptTarget
		want string
	}{
		{"512", CryptTarget{Length: 65536, Cipher: "aes-xts-plain64", Key: key, Device: "7:0", Offset: 32768},
			"aes-xts-plain64 " + hk + " 0 7:0 32768"},
		{"512-explicit", CryptTarget{Length: 65536, Cipher: "aes-xts-plain64", Key: key, Device: "/dev/vdb", Offset: 32768, SectorSize: 512},
			"aes-xts-plain64 " + hk + " 0 /dev/vdb 32768"},
		{"4096", CryptTarget{Length: 65536, Cipher: "aes-xts-plain64", Key: key, Device: "254:16", Offset: 32768, SectorSize: 4096},
			"aes-xts-plain64 " + hk + " 0 254:16 32768 1 sector_size:4096"},
		{"discards", CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", Offset: 4096, Flags: AllowDiscards},
			"aes-xts-plain64 " + hk + " 0 8:0 4096 1 allow_discards"},
		{"workqueues-4096", CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", Offset: 32768, SectorSize: 4096,
			Flags: NoWriteWorkqueue | NoReadWorkqueue},
			"aes-xts-plain64 " + hk + " 0 8:0 32768 3 no_read_workqueue no_write_workqueue sector_size:4096"},
		{"all", CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", Offset: 32768, SectorSize: 4096, IVOffset: 8,
			Flags: NoWriteWorkqueue | NoReadWorkqueue | SubmitFromCryptCPUs | SameCPUCrypt | AllowDiscards},
			"aes-xts-plain64 " + hk + " 8 8:0 32768 6 allow_discards same_cpu_crypt submit_from_crypt_cpus no_read_workqueue no_write_workqueue sector_size:4096"},
		{"256-bit", CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: key[:32], Device: "8:0", Offset: 32768},
			"aes-xts-plain64 " + hk[:64] + " 0 8:0 32768"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tc.t.Params()
			if err != nil {
				t.Fatal(err)
			}
			if string(p) != tc.want {
				t.Errorf("Params =\n%s\nwant\n%s", p, tc.want)
			}
			clear(p)
			// Redaction everywhere a target may end up.
			for _, s := range []string{tc.t.String(), fmt.Sprint(tc.t), fmt.Sprintf("%v %+v %#v", tc.t, &tc.t, tc.t)} {
				if strings.Contains(s, hk[:16]) || !strings.Contains(s, redactedKey) {
					t.Errorf("formatted target leaks or lacks redaction: %s", s)
				}
			}
			wantStr := fmt.Sprintf("%d %d crypt ", tc.t.Start, tc.t.Length) + strings.Replace(tc.want, hk[:2*len(tc.t.Key)], redactedKey, 1)
			if tc.t.String() != wantStr {
				t.Errorf("String = %q, want %q", tc.t.String(), wantStr)
			}
			if _, err := json.Marshal(tc.t); err == nil {
				t.Error("json.Marshal of a CryptTarget succeeded")
			}
			// What the kernel reports back parses to the same target.
			back, err := ParseCryptParams(strings.Replace(tc.want, hk[:2*len(tc.t.Key)], redactedKey, 1))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.t
			want.Key, want.Start, want.Length = nil, 0, 0
			if want.SectorSize == 0 {
				want.SectorSize = 512
			}
			if fmt.Sprint(*back) != fmt.Sprint(want) {
				t.Errorf("ParseCryptParams = %v, want %v", back, want)
			}
		})
	}
}

func TestCryptTargetValidate(t *testing.T) {
	key := testKey(64)
	bad := []CryptTarget{
		{Length: 8, Cipher: "", Key: key, Device: "8:0"},
		{Length: 8, Cipher: "aes xts", Key: key, Device: "8:0"},
		{Length: 8, Cipher: "aes-xts-plain64", Device: "8:0"},
		{Length: 8, Cipher: "aes-xts-plain64", Key: key, Device: ""},
		{Length: 0, Cipher: "aes-xts-plain64", Key: key, Device: "8:0"},
		{Length: 7, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", SectorSize: 4096},
		{Length: 8, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", SectorSize: 4096, Offset: 3},
		{Length: 8, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", SectorSize: 1000},
		{Length: 16, Cipher: "aes-xts-plain64", Key: key, Device: "8:0", SectorSize: 8192},
	}
	for i, tc := range bad {
		_, err := tc.Params()
		if err == nil {
			t.Errorf("case %d: Params accepted %v", i, tc)
			continue
		}
		if strings.Contains(err.Error(), hex.EncodeToString(key)[:8]) {
			t.Errorf("case %d: error leaks the key: %v", i, err)
		}
	}
}

func TestDMUUID(t *testing.T) {
	got, err := DMUUID("B1A0E2C2-4a1f-4d9b-9f1a-0123456789ab", "cr_data")
	if err != nil || got != "CRYPT-LUKS2-b1a0e2c24a1f4d9b9f1a0123456789ab-cr_data" {
		t.Fatalf("DMUUID = %q, %v", got, err)
	}
	for _, u := range []string{"", "not-a-uuid", "b1a0e2c24a1f4d9b9f1a0123456789ab"} {
		if _, err := DMUUID(u, "x"); err == nil {
			t.Errorf("DMUUID(%q) accepted", u)
		}
	}
	if _, err := DMUUID("b1a0e2c2-4a1f-4d9b-9f1a-0123456789ab", strings.Repeat("n", 100)); err == nil {
		t.Error("over-long dm UUID accepted")
	}
}

func TestCryptFlags(t *testing.T) {
	for _, n := range []string{"allow-discards", "same-cpu-crypt", "submit-from-crypt-cpus", "no-read-workqueue", "no-write-workqueue", "allow_discards"} {
		f, err := ParseCryptFlag(n)
		if err != nil || f == 0 {
			t.Errorf("ParseCryptFlag(%q) = %v, %v", n, f, err)
		}
	}
	if _, err := ParseCryptFlag("iv_large_sectors"); err == nil {
		t.Error("iv_large_sectors accepted: LUKS2 never uses it")
	}
	if s := (AllowDiscards | NoWriteWorkqueue).String(); s != "allow_discards no_write_workqueue" {
		t.Errorf("String = %q", s)
	}
}

// TestLUKS2TargetFromCryptsetup formats volumes with cryptsetup and builds
// the target from what luksDump reports (segment offset, sector size,
// cipher), checking units: offset in 512-byte sectors, length up to the
// device end, sector_size only for 4096, IV offset 0.
func TestLUKS2TargetFromCryptsetup(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(strconv.Itoa(ss), func(t *testing.T) {
			const size = 32 << 20
			img := makeImage(t, size)
			key := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(key, []byte("pass"), 0o600); err != nil {
				t.Fatal(err)
			}
			run(t, "", "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--sector-size", strconv.Itoa(ss),
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, img)
			out, err := exec.Command("cryptsetup", "luksDump", img).Output()
			if err != nil {
				t.Fatal(err)
			}
			dump := string(out)
			field := func(re string) string {
				m := regexp.MustCompile(re).FindStringSubmatch(dump)
				if m == nil {
					t.Fatalf("luksDump lacks %s:\n%s", re, dump)
				}
				return m[1]
			}
			off, _ := strconv.ParseInt(field(`(?m)^\s+offset:\s+(\d+) \[bytes\]`), 10, 64)
			sector, _ := strconv.Atoi(field(`(?m)^\s+sector:\s+(\d+) \[bytes\]`))
			cipher := field(`(?m)^\s+cipher:\s+(\S+)`)
			vk := testKey(64)
			tgt, err := NewLUKS2Target("7:0", size, off, cipher, vk, 0, uint32(sector), 0)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("0 %d crypt aes-xts-plain64 %s 0 7:0 %d", (size-off)/512, redactedKey, off/512)
			if ss == 4096 {
				want += " 1 sector_size:4096"
			}
			if tgt.String() != want {
				t.Errorf("target %q, want %q", tgt.String(), want)
			}
		})
	}
	if _, err := NewLUKS2Target("7:0", 16<<20+512, 16<<20, "aes-xts-plain64", testKey(64), 0, 4096, 0); err == nil {
		t.Error("data area not a multiple of 4096 accepted")
	}
}
