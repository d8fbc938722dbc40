package vmtests

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Test-only initramfs-tools scripts the root scenario installs in the guest beside
// diskcryptd's own: init-top extends a PCR when the boot asks for a tampered boot
// (before diskcryptd's local-top script runs), init-bottom hands the boot's steps to
// the root file system's /run (initramfs-tools moves /run over). klibc's tools only: no
// cp, so files are copied with cat.
const (
	rootInitTop = `#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case $1 in prereqs) prereqs; exit 0 ;; esac
if [ -f /vmtest/tamper-pcr ] && [ -x /bin/pcrextend ]; then
	/bin/pcrextend -pcr "$(cat /vmtest/tamper-pcr)" -data evil-bootloader && echo "vmtests: PCR extended" >/dev/console
fi
exit 0
`
	rootInitBottom = `#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case $1 in prereqs) prereqs; exit 0 ;; esac
[ -d /steps ] || exit 0
mkdir -p /run/vmtest/steps
for f in /steps/*; do cat "$f" >"/run/vmtest/steps/${f##*/}"; done
cat /etc/boot.env >/run/vmtest/boot.env
for f in /vmtest/*; do [ -f "$f" ] && cat "$f" >"/run/vmtest/${f##*/}"; done
exit 0
`
)

// TestSystemdEncryptedRoot: the systemd guest moves its root file system onto a LUKS2
// volume diskcryptd formats and enrolls (TPM2, PCR 7, and a recovery key), writes
// /etc/diskcryptd/initramfs.conf and rebuilds the initramfs with update-initramfs in a
// chroot, so the package's initramfs-tools hook and local-top script go in. It then
// boots that initramfs unattended into the encrypted root through the TPM; after a
// tampered boot (PCR 7 extended in init-top) the local-top script asks on the serial
// console and the recovery key, typed there, unlocks the root.
func TestSystemdEncryptedRoot(t *testing.T) {
	e, img := setupSystemd(t)
	m := newSystemdMachine(t, e, img)
	addDisk(t, m, "croot", 2<<30)
	xfer := addDisk(t, m, "xfer", 128<<20)
	pass := []byte("initial " + randHex(t, 8))
	marker := "encrypted root " + randHex(t, 8)

	b1 := sdBoot(t, m, map[string][]byte{
		"/run/vmtest/initial.key": pass,
		"/run/vmtest/init-top":    []byte(rootInitTop),
		"/run/vmtest/init-bottom": []byte(rootInitBottom),
	},
		Step{Name: "format", Script: `dev=$(disk croot)
diskcryptd format --key-file /run/vmtest/initial.key ` + sdFormat + ` $dev
diskcryptd enroll tpm2 --key-file /run/vmtest/initial.key --tpm2-pcrs 7 $dev >/dev/null
diskcryptd enroll recovery --key-file /run/vmtest/initial.key $dev
diskcryptd unlock --key-file /run/vmtest/initial.key $dev croot
mkfs.ext4 -q -L cryptroot /dev/mapper/croot`},
		Step{Name: "copy", Script: `mount /dev/mapper/croot /mnt
cp -ax /. /mnt/
echo "` + marker + `" > /mnt/etc/vmtest-marker
echo "/dev/mapper/croot / ext4 defaults 0 1" > /mnt/etc/fstab
rm -f /mnt/etc/diskcryptd/diskcryptd.conf /mnt/etc/crypttab
mkdir -p /mnt/etc/diskcryptd
printf 'tpm2-device /dev/tpmrm0\ntoken-timeout 60s\ndevice-timeout 60s\nsocket none\nvolume croot UUID=%s\n' "$(diskcryptd dump --json $(disk croot) | jq -r .uuid)" > /mnt/etc/diskcryptd/initramfs.conf
cat /mnt/etc/diskcryptd/initramfs.conf
d=/mnt/etc/initramfs-tools
install -D -m 0755 /run/vmtest/init-top $d/scripts/init-top/vmtest
install -D -m 0755 /run/vmtest/init-bottom $d/scripts/init-bottom/vmtest
printf 'MODULES=list\nCOMPRESS=gzip\n' > $d/conf.d/vmtest
printf 'virtio_pci\nvirtio_blk\nvirtio_console\next4\n' >> $d/modules
df -h /mnt | tail -1`},
		Step{Name: "update-initramfs", Script: `for f in dev proc sys run; do mkdir -p /mnt/$f; done
mount --bind /dev /mnt/dev; mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount -t tmpfs tmpfs /mnt/run
rel=$(ls /mnt/lib/modules | head -1)
chroot /mnt update-initramfs -u -k $rel 2>&1
chroot /mnt lsinitramfs /boot/initrd.img-$rel | grep -E 'diskcryptd|initramfs.conf|dm-crypt|/stty$|/printf$|scripts/local-top/|init-bottom/vmtest' | sort
size=$(stat -c %s /mnt/boot/initrd.img-$rel)
dd if=/mnt/boot/initrd.img-$rel of=$(disk xfer) bs=1M conv=fsync 2>/dev/null
echo "initrd-size $size"
umount /mnt/run /mnt/sys /mnt/proc /mnt/dev /mnt
diskcryptd lock croot`},
	)
	t.Logf("boot 1 (encrypt the root, update-initramfs in the guest): wall %s", b1.Wall.Round(time.Millisecond))
	rk := regexp.MustCompile(recoveryKeyPattern).FindString(out(t, b1, "format"))
	if rk == "" {
		t.Fatalf("no recovery key printed")
	}
	t.Logf("copy: %s", out(t, b1, "copy"))
	ui := out(t, b1, "update-initramfs")
	t.Logf("update-initramfs and the initramfs layout:\n%s", ui)
	for _, want := range []string{"sbin/diskcryptd\n", "sbin/diskcryptd-initramfs-unlock", "etc/diskcryptd/initramfs.conf", "scripts/local-top/diskcryptd", "dm-crypt.ko"} {
		if !strings.Contains(ui, want) {
			t.Errorf("the initramfs update-initramfs built lacks %s", want)
		}
	}
	msz := regexp.MustCompile(`initrd-size (\d+)`).FindStringSubmatch(ui)
	if msz == nil {
		t.Fatal("no initrd size")
	}
	size, _ := strconv.Atoi(msz[1])
	initrd, err := ReadAt(xfer, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		return
	}

	// Boots 2 and 3 start from the guest's own initramfs (initramfs-tools with the hook).
	// The kernel reads the harness's appended (uncompressed) archive only at a 4-byte
	// aligned offset after the compressed one; zeros in between are skipped.
	re := *m.env
	re.Initramfs = append(initrd, make([]byte, (4-len(initrd)%4)%4)...)
	m.env = &re
	m.Append = "root=/dev/mapper/croot"
	// /usr/bin, not /bin: in the merged-/usr initramfs /bin is a symlink, and an archive
	// entry "bin" (a directory) would replace it.
	m.Extra = map[string]string{"/usr/bin/pcrextend": e.Binaries["/bin/pcrextend"]}
	lib := map[string][]byte{"/vmtest/lib.sh": []byte(libScript)}
	check := Step{Name: "root", Script: "findmnt -n -o SOURCE,TARGET /\ncat /etc/vmtest-marker\ncat /proc/cmdline"}

	b2 := sdBoot(t, m, lib, check)
	t.Logf("boot 2 (unattended, TPM): wall %s, runner at %.2fs uptime", b2.Wall.Round(time.Millisecond), b2.Ready)
	if got := out(t, b2, "root"); !strings.Contains(got, "/dev/mapper/croot /") || !strings.Contains(got, marker) {
		t.Errorf("not booted into the encrypted root:\n%s", got)
	}

	// Boot 3: tampered; the recovery key is typed at the console prompt.
	m.ConsoleReplies = []ConsoleReply{{When: "Passphrase or recovery key for croot: ", Send: rk + "\n"}}
	files := map[string][]byte{"/vmtest/lib.sh": []byte(libScript), "/vmtest/tamper-pcr": []byte("7")}
	b3 := sdBoot(t, m, files, check)
	t.Logf("boot 3 (tampered, recovery key on the console): wall %s", b3.Wall.Round(time.Millisecond))
	if got := out(t, b3, "root"); !strings.Contains(got, "/dev/mapper/croot /") || !strings.Contains(got, marker) {
		t.Errorf("the recovery key did not unlock the root:\n%s", got)
	}
	con, _ := os.ReadFile(b3.Console)
	for _, want := range []string{"vmtests: PCR extended", "the TPM did not unlock croot", "croot unlocked"} {
		if !bytes.Contains(con, []byte(want)) {
			t.Errorf("console of the tampered boot lacks %q", want)
		}
	}
	if bytes.Contains(con, []byte(rk)) {
		t.Errorf("the recovery key was echoed on the console")
	}
}
