package vmtests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sdBootTimeout bounds one systemd guest boot: systemd under TCG on a shared machine
// is much slower than the busybox guest.
var sdBootTimeout = 10 * time.Minute

var (
	sdOnce sync.Once
	sdEnv  *Env
	sdImg  *RootImage
	sdErr  error
)

// setupSystemd returns the systemd guest's assets: an Env whose initramfs switches to
// the root disk, and the root image with the freshly built diskcryptd package.
func setupSystemd(t *testing.T) (*Env, *RootImage) {
	t.Helper()
	e := setup(t)
	need(t, e, "diskcryptd")
	needHost(t, "mmdebstrap", "mkfs.ext4", "dpkg-deb", "tar")
	sdOnce.Do(func() { sdEnv, sdImg, sdErr = buildSystemdAssets(e) })
	if sdErr != nil {
		t.Fatalf("systemd guest assets: %v", sdErr)
	}
	return sdEnv, sdImg
}

func buildSystemdAssets(e *Env) (*Env, *RootImage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cache, err := filepath.Abs(".cache")
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	tar, took, err := FetchRootfs(ctx, cache)
	if err != nil {
		return nil, nil, err
	}
	if took > 0 {
		fmt.Fprintf(os.Stderr, "vmtests: mmdebstrap built %s in %s\n", filepath.Base(tar), took.Round(time.Second))
	}
	deb := filepath.Join(cache, "bin", "diskcryptd.deb")
	cmd := exec.CommandContext(ctx, "sh", "contrib/debian/build-deb.sh", e.Binaries["/bin/diskcryptd"], "0.0.0+vmtest", deb)
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("build-deb.sh: %w\n%s", err, out)
	}
	// The image is content-addressed: the same tarball and package give the same image.
	h := sha256.New()
	fmt.Fprint(h, tar, guestRunner, guestRunnerUnit, systemdFiles)
	if f, err := os.Open(deb); err == nil {
		io.Copy(h, f)
		f.Close()
	}
	dir := filepath.Join(cache, "sdroot-"+hex.EncodeToString(h.Sum(nil)[:6]))
	img := &RootImage{Path: filepath.Join(dir, "root.img"), Size: 3 << 30}
	if _, err := os.Stat(img.Path); err != nil {
		olds, _ := filepath.Glob(filepath.Join(cache, "sdroot-*"))
		for _, o := range olds {
			os.RemoveAll(o)
		}
		tmp := dir + ".tmp"
		os.RemoveAll(tmp)
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			return nil, nil, err
		}
		if _, err := MakeRootImage(ctx, tar, deb, tmp, img.Size, nil); err != nil {
			return nil, nil, err
		}
		if err := os.Rename(tmp, dir); err != nil {
			return nil, nil, err
		}
	}
	busybox, err := FetchBusybox(ctx, cache)
	if err != nil {
		return nil, nil, err
	}
	sd := *e
	sd.Initramfs, err = BuildSystemdInitramfs(busybox, e.Modules, map[string]string{"/bin/pcrextend": e.Binaries["/bin/pcrextend"]})
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(os.Stderr, "vmtests: systemd guest root image %s ready in %s\n", img.Path, time.Since(start).Round(time.Millisecond))
	return &sd, img, nil
}

// newSystemdMachine is newMachine with the root disk attached first.
func newSystemdMachine(t *testing.T, e *Env, img *RootImage) *Machine {
	t.Helper()
	m := newMachine(t, e)
	if err := m.CloneRootDisk(t.Context(), img); err != nil {
		t.Fatal(err)
	}
	return m
}

// sdBoot boots a systemd machine and fails the test if the guest did not report every
// step; on failure it logs the results and the console's tail.
func sdBoot(t *testing.T, m *Machine, files map[string][]byte, steps ...Step) *Boot {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), max(sdBootTimeout, *bootTimeout))
	defer cancel()
	b, err := m.Boot(ctx, steps, files)
	if err != nil {
		if b != nil {
			for _, r := range b.Results {
				t.Logf("%s", r)
			}
			if tail, rerr := os.ReadFile(b.Console); rerr == nil {
				t.Logf("console tail:\n%s", lastLines(string(tail), 60))
			}
		}
		t.Fatal(err)
	}
	return b
}

// out returns a step's stdout, failing the test unless it exited 0.
func out(t *testing.T, b *Boot, name string) string {
	t.Helper()
	return string(ok(t, b, name).Stdout)
}

// sdFormat are the diskcryptd format flags of the guest's test volumes: cheap KDF under
// TCG (the provisioning passphrase is removed anyway).
const sdFormat = "--sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000"

// stepProvision follows docs/operations.md "Provision a server" for the disk with
// serial name: format, TPM2 (PCRs 0+7), recovery key, drop the provisioning passphrase,
// declare the volume, enable the service. It also puts an ext4 file system with a
// marker file on the volume first (the operator's own step).
func stepProvision(name string) Step {
	return Step{Name: "provision-" + name, Script: `dev=$(disk ` + name + `)
install -m 0600 /run/vmtest/initial.key /root/initial.key
diskcryptd format --key-file /root/initial.key ` + sdFormat + ` $dev
diskcryptd enroll tpm2 --key-file /root/initial.key --tpm2-pcrs 0+7 $dev >/dev/null
diskcryptd enroll recovery --key-file /root/initial.key $dev >/run/vmtest/recovery-` + name + `
diskcryptd unlock --key-file /root/initial.key $dev ` + name + `
mkfs.ext4 -q /dev/mapper/` + name + `
mkdir -p /mnt/` + name + ` && mount /dev/mapper/` + name + ` /mnt/` + name + `
cp /run/vmtest/marker /mnt/` + name + `/marker && umount /mnt/` + name + `
diskcryptd lock ` + name + `
diskcryptd keyslot list $dev >&2
diskcryptd keyslot remove --slot 0 $dev && shred -u /root/initial.key
mkdir -p /etc/diskcryptd
echo "volume ` + name + ` UUID=$(diskcryptd dump --json $dev | jq -r .uuid) discard" >> /etc/diskcryptd/diskcryptd.conf
cat /run/vmtest/recovery-` + name + `
`}
}

// TestSystemd is the shipped unit under real systemd, on one machine across four
// boots: provision (following docs/operations.md), a reboot where diskcryptd.service
// unlocks the volume before local-fs.target so /etc/fstab mounts it (status line,
// socket, metrics, journal fields, RSS, watchdog restart), a tampered boot (the unit
// says why, nofail keeps the boot going, the recovery key still opens the volume),
// and both directions with systemd's own tools: systemd-cryptsetup opens through
// crypttab a volume diskcryptd enrolled, and diskcryptd opens one systemd-cryptenroll
// enrolled.
func TestSystemd(t *testing.T) {
	e, img := setupSystemd(t)
	m := newSystemdMachine(t, e, img)
	addDisk(t, m, "data0", diskSize)
	addDisk(t, m, "dc1", diskSize) // diskcryptd enrolls, systemd-cryptsetup opens
	addDisk(t, m, "ce1", diskSize) // systemd-cryptenroll enrolls, diskcryptd opens
	marker := []byte("diskcryptd systemd guest " + randHex(t, 8) + "\n")
	pass := []byte("initial " + randHex(t, 8))

	b1 := sdBoot(t, m, map[string][]byte{"/run/vmtest/initial.key": pass, "/run/vmtest/marker": marker},
		Step{Name: "systemd", Script: "systemctl --version | head -1; dpkg -s diskcryptd | grep -E '^(Status|Version)'; systemctl is-enabled diskcryptd.service; systemctl show -p ActiveState -p ConditionResult diskcryptd"},
		stepProvision("data0"),
		Step{Name: "fstab", Script: "echo '/dev/mapper/data0 /srv ext4 defaults 0 2' >> /etc/fstab\nsystemctl enable diskcryptd.service\ncat /etc/diskcryptd/diskcryptd.conf"},
		// diskcryptd enrolls dc1; crypttab hands it to systemd-cryptsetup.
		Step{Name: "crypttab", Script: `dev=$(disk dc1)
diskcryptd format --key-file /run/vmtest/initial.key ` + sdFormat + ` $dev
diskcryptd enroll tpm2 --key-file /run/vmtest/initial.key --tpm2-pcrs 7 $dev >/dev/null
diskcryptd unlock --key-file /run/vmtest/initial.key $dev dc1
dd if=/run/vmtest/marker of=/dev/mapper/dc1 bs=4096 conv=sync,fsync 2>/dev/null
diskcryptd lock dc1
echo "dc1 UUID=$(diskcryptd dump --json $dev | jq -r .uuid) none tpm2-device=auto,headless=true,nofail" >> /etc/crypttab
cat /etc/crypttab`},
		// systemd-cryptenroll enrolls ce1 (cryptsetup formats it); diskcryptd opens it next boot.
		Step{Name: "cryptenroll", Script: `dev=$(disk ce1)
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /run/vmtest/initial.key $dev
systemd-cryptenroll --unlock-key-file=/run/vmtest/initial.key --tpm2-device=auto --tpm2-pcrs=7 $dev
cryptsetup open --key-file /run/vmtest/initial.key $dev ce1
dd if=/run/vmtest/marker of=/dev/mapper/ce1 bs=4096 conv=sync,fsync 2>/dev/null
cryptsetup close ce1
cryptsetup luksDump $dev | grep -A2 -E '^Tokens' `},
	)
	t.Logf("boot 1 (provision under systemd): wall %s, runner started at %.2fs uptime", b1.Wall.Round(time.Millisecond), b1.Ready)
	t.Logf("%s", out(t, b1, "systemd"))
	prov := out(t, b1, "provision-data0")
	recovery := regexp.MustCompile(recoveryKeyPattern).FindString(prov)
	if recovery == "" {
		t.Fatalf("provisioning printed no recovery key:\n%s", prov)
	}
	out(t, b1, "fstab")
	out(t, b1, "crypttab")
	out(t, b1, "cryptenroll")

	// Boot 2: nothing but the TPM; systemd brings both volumes up and mounts /srv.
	b2 := sdBoot(t, m, nil,
		Step{Name: "no-secrets", Script: "! test -e /root/initial.key && ! test -e /run/vmtest/initial.key"},
		Step{Name: "mounted", Script: "findmnt -n -o SOURCE,TARGET /srv\ncat /srv/marker"},
		Step{Name: "status-text", Script: "systemctl show -p StatusText --value diskcryptd"},
		Step{Name: "ordering", Script: `for u in diskcryptd.service srv.mount local-fs.target systemd-cryptsetup@dc1.service cryptsetup.target; do
	echo "$u $(systemctl show -p ActiveEnterTimestampMonotonic --value $u) $(systemctl show -p ActiveState --value $u)"
done`},
		Step{Name: "socket", Script: "diskcryptd status --json"},
		stepUnitTimes("times", "diskcryptd.service", "systemd-cryptsetup@dc1.service"),
		Step{Name: "metrics", Script: "curl -sf --unix-socket /run/diskcryptd/diskcryptd.sock http://x/metrics"},
		Step{Name: "journal", Script: "journalctl -b -o json --no-pager MESSAGE_ID=5b0d3e2a9c1f4e6b8a7d2c4f1e3b5a90 | jq -r 'to_entries[] | select(.key|test(\"^(MESSAGE|VOLUME|TOKEN|TYPE|PROTECTOR|MESSAGE_ID|PRIORITY|_SYSTEMD_UNIT|SYSLOG_IDENTIFIER)$\")) | \"\\(.key)=\\(.value)\"'"},
		Step{Name: "rss", Script: "pid=$(systemctl show -p MainPID --value diskcryptd)\ngrep -E '^(VmRSS|VmHWM)' /proc/$pid/status"},
		Step{Name: "crypttab-opened", Script: "systemctl is-active systemd-cryptsetup@dc1.service\ndd if=/dev/mapper/dc1 bs=4096 count=1 2>/dev/null | head -c " + strconv.Itoa(len(marker))},
		Step{Name: "cryptenrolled", Script: "diskcryptd unlock $(disk ce1) ce1\ndd if=/dev/mapper/ce1 bs=4096 count=1 2>/dev/null | head -c " + strconv.Itoa(len(marker)) + "\ndiskcryptd lock ce1"},
		Step{Name: "watchdog", Script: `mkdir -p /run/systemd/system/diskcryptd.service.d
printf '[Service]\nWatchdogSec=6s\n' > /run/systemd/system/diskcryptd.service.d/vmtest-watchdog.conf
systemctl daemon-reload
systemctl restart diskcryptd
pid=$(systemctl show -p MainPID --value diskcryptd)
n0=$(systemctl show -p NRestarts --value diskcryptd)
echo "pid $pid restarts $n0"
kill -STOP $pid
i=0
while [ $i -lt 120 ]; do
	new=$(systemctl show -p MainPID --value diskcryptd)
	[ "$new" != "$pid" ] && [ "$new" != 0 ] && [ "$(systemctl is-active diskcryptd)" = active ] && break
	sleep 1; i=$((i+1))
done
echo "pid $new restarts $(systemctl show -p NRestarts --value diskcryptd) after ${i}s"
systemctl show -p StatusText --value diskcryptd
journalctl -b -u diskcryptd --no-pager | grep -i watchdog
rm -r /run/systemd/system/diskcryptd.service.d; systemctl daemon-reload`},
		Step{Name: "nofail", Script: "sed -i 's|^/dev/mapper/data0 /srv ext4 defaults 0 2$|/dev/mapper/data0 /srv ext4 defaults,nofail 0 2|' /etc/fstab\ngrep /srv /etc/fstab"},
	)
	t.Logf("boot 2 (TPM unlock under systemd): wall %s, runner started at %.2fs uptime", b2.Wall.Round(time.Millisecond), b2.Ready)
	ok(t, b2, "no-secrets")
	if got := out(t, b2, "mounted"); !strings.Contains(got, "/dev/mapper/data0 /srv") || !strings.Contains(got, string(marker)) {
		t.Errorf("/srv is not the unlocked volume with its marker:\n%s", got)
	}
	if st := strings.TrimSpace(out(t, b2, "status-text")); st != "1 of 1 volumes unlocked" {
		t.Errorf("StatusText = %q; want \"1 of 1 volumes unlocked\"", st)
	}
	order := parseOrdering(t, out(t, b2, "ordering"))
	t.Logf("ActiveEnterTimestampMonotonic (µs): %v", order)
	if !(order["diskcryptd.service"] > 0 && order["diskcryptd.service"] <= order["srv.mount"] && order["srv.mount"] <= order["local-fs.target"]) {
		t.Errorf("want diskcryptd.service ready before srv.mount before local-fs.target: %v", order)
	}
	ut := parseUnitTimes(t, out(t, b2, "times"))
	dcd, sdc := ut["diskcryptd.service"], ut["systemd-cryptsetup@dc1.service"]
	t.Logf("1 disk each, same boot: diskcryptd.service ready at %.2fs (%.2fs from unit start); systemd-cryptsetup@dc1 ready at %.2fs (%.2fs from unit start)",
		float64(dcd.ready)/1e6, float64(dcd.ready-dcd.start)/1e6, float64(sdc.ready)/1e6, float64(sdc.ready-sdc.start)/1e6)
	if sock := out(t, b2, "socket"); !strings.Contains(sock, `"state": "unlocked"`) {
		t.Errorf("status socket does not report data0 unlocked:\n%s", sock)
	}
	if met := out(t, b2, "metrics"); !strings.Contains(met, `diskcryptd_volume_state{volume="data0",state="unlocked"} 1`) ||
		!strings.Contains(met, `diskcryptd_volume_unlock_seconds{volume="data0"}`) {
		t.Errorf("metrics:\n%s", met)
	}
	j := out(t, b2, "journal")
	for _, want := range []string{"VOLUME=data0", "PROTECTOR=", "TOKEN=", "MESSAGE_ID=5b0d3e2a9c1f4e6b8a7d2c4f1e3b5a90", "_SYSTEMD_UNIT=diskcryptd.service"} {
		if !strings.Contains(j, want) {
			t.Errorf("journal entry of the unlock lacks %s:\n%s", want, j)
		}
	}
	t.Logf("journal entry of the unlock (JSON fields):\n%s", j)
	rss := out(t, b2, "rss")
	t.Logf("daemon memory after boot: %s", strings.Join(strings.Fields(rss), " "))
	if got := out(t, b2, "crypttab-opened"); !strings.Contains(got, "active") || !strings.Contains(got, string(marker)) {
		t.Errorf("systemd-cryptsetup did not open dc1 (enrolled by diskcryptd) through crypttab tpm2-device=auto:\n%s", got)
	}
	if got := out(t, b2, "cryptenrolled"); !strings.Contains(got, string(marker)) {
		t.Errorf("diskcryptd did not open ce1 (enrolled by systemd-cryptenroll):\n%s", got)
	}
	wd := out(t, b2, "watchdog")
	t.Logf("watchdog:\n%s", wd)
	if m := regexp.MustCompile(`pid (\d+) restarts (\d+)\npid (\d+) restarts (\d+) after`).FindStringSubmatch(wd); m == nil || m[1] == m[3] || m[2] == m[4] ||
		!strings.Contains(strings.ToLower(wd), "watchdog timeout") {
		t.Errorf("the watchdog did not restart the stopped daemon:\n%s", wd)
	}
	out(t, b2, "nofail")

	// Boot 3: PCR 7 extended in the initramfs, before systemd.
	b3 := sdBoot(t, m, map[string][]byte{"/run/vmtest/tamper-pcr": []byte("7"), "/run/vmtest/recovery": []byte(recovery)},
		Step{Name: "booted", Script: "systemctl is-active multi-user.target local-fs.target\nsystemctl is-system-running || true"},
		Step{Name: "unit", Script: "systemctl show -p ActiveState -p SubState -p StatusText diskcryptd\nsystemctl status --no-pager -l -n 20 diskcryptd || true"},
		Step{Name: "not-mounted", Script: "! findmnt /srv && ! test -e /dev/mapper/data0"},
		Step{Name: "socket", Script: "diskcryptd status --json"},
		Step{Name: "recovery", Script: "diskcryptd unlock --key-file /run/vmtest/recovery $(disk data0) data0\nsystemctl start srv.mount\ncat /srv/marker"},
	)
	t.Logf("boot 3 (tampered): wall %s", b3.Wall.Round(time.Millisecond))
	t.Logf("%s", out(t, b3, "booted"))
	unit := out(t, b3, "unit")
	t.Logf("systemctl status after a tampered boot:\n%s", unit)
	if !strings.Contains(unit, "StatusText=0 of 1 volumes unlocked") || !strings.Contains(unit, "PCR") {
		t.Errorf("systemctl does not say the volume stayed locked because of the PCRs:\n%s", unit)
	}
	ok(t, b3, "not-mounted")
	if sock := out(t, b3, "socket"); !strings.Contains(sock, `"state": "locked"`) {
		t.Errorf("status socket after a tampered boot:\n%s", sock)
	}
	if got := out(t, b3, "recovery"); !strings.Contains(got, string(marker)) {
		t.Errorf("recovery key did not open the volume after the tampered boot:\n%s", got)
	}
}

// parseOrdering reads "UNIT MICROSECONDS STATE" lines.
func parseOrdering(t *testing.T, s string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Errorf("ordering line %q: %v", line, err)
			continue
		}
		m[f[0]] = v
	}
	return m
}
