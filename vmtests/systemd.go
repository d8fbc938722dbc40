package vmtests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The systemd guest: a minbase Debian 12 root file system built by mmdebstrap from
// Debian's packages (cached by the hash of its package list), with diskcryptd installed
// from the package `make deb` builds, on an ext4 virtio disk (serial "root"). A small
// busybox initramfs mounts it and switches root to systemd; a guest service,
// vmtest.service, runs the boot's steps after multi-user.target and writes the same
// records as the busybox guest's /init to the "results" virtio-serial port, then powers
// the machine off.

// SystemdPackages are the packages of the systemd guest (mmdebstrap --include). The
// cloud kernel's package puts the modules (and initramfs-tools) into the guest.
var SystemdPackages = []string{
	"systemd", "systemd-sysv", "udev", "kmod", "e2fsprogs", "cryptsetup-bin",
	// systemd-cryptsetup and systemd-cryptenroll dlopen the TSS libraries.
	"libtss2-esys-3.0.2-0", "libtss2-mu0", "libtss2-rc0", "libtss2-tcti-device0",
	"curl", "jq", KernelMetaPackage,
}

// RootSerial is the virtio serial of the systemd guest's root disk.
const RootSerial = "root"

// FetchRootfs returns a tarball of the systemd guest's root file system, built by
// mmdebstrap into cacheDir unless a tarball for the same package list and suite is
// already there. It reports how long mmdebstrap took (0 when cached).
func FetchRootfs(ctx context.Context, cacheDir string) (string, time.Duration, error) {
	h := sha256.Sum256([]byte("bookworm minbase " + strings.Join(SystemdPackages, ",")))
	tar := filepath.Join(cacheDir, "rootfs-bookworm-"+hex.EncodeToString(h[:6])+".tar")
	if _, err := os.Stat(tar); err == nil {
		return tar, 0, nil
	}
	tmp := tar + ".tmp"
	start := time.Now()
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--quiet", "--variant=minbase", "--format=tar",
		"--include="+strings.Join(SystemdPackages, ","), "bookworm", tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", 0, fmt.Errorf("mmdebstrap: %w\n%s", err, out)
	}
	if err := os.Rename(tmp, tar); err != nil {
		return "", 0, err
	}
	return tar, time.Since(start), nil
}

// guestRunner is /usr/local/sbin/vmtest-run in the systemd guest: the busybox /init's
// step loop for a systemd boot. The initramfs leaves the boot's steps, boot.env and
// lib.sh in /run/vmtest.
const guestRunner = `#!/bin/sh
. /run/vmtest/boot.env
port=/dev/virtio-ports/results
i=0
while [ ! -c "$port" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
exec 3>"$port"
printf '@@%s BOOT %s\n' "$NONCE" "$(cut -d' ' -f1 /proc/uptime)" >&3
for s in /run/vmtest/steps/*.sh; do
	[ -f "$s" ] || continue
	n=${s##*/}
	n=${n%.sh}
	echo "vmtest: step $n" >/dev/console
	sh -e -c '. /run/vmtest/lib.sh; . "$1"' step "$s" >/run/vmtest/.out 2>/run/vmtest/.err </dev/null
	rc=$?
	printf '@@%s STEP %s %d %d %d %s\n' "$NONCE" "$n" "$rc" "$(wc -c </run/vmtest/.out)" "$(wc -c </run/vmtest/.err)" "$(cut -d' ' -f1 /proc/uptime)" >&3
	cat /run/vmtest/.out /run/vmtest/.err >&3
done
printf '@@%s END\n' "$NONCE" >&3
exec 3>&-
sync
systemctl --no-block poweroff
`

// guestRunnerUnit starts the runner once the boot reached multi-user.target.
const guestRunnerUnit = `[Unit]
Description=vmtests: run this boot's steps, report on the results port, power off
After=multi-user.target
ConditionPathIsDirectory=/run/vmtest/steps

[Service]
Type=simple
ExecStart=/usr/local/sbin/vmtest-run
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
`

// systemdInit is the systemd guest's initramfs /init: load the modules, mount the
// root disk (virtio serial "root"), carry /run (the boot's steps and files) over on a
// tmpfs that systemd keeps, and switch root to systemd.
const systemdInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done < /etc/modules.order
root=
i=0
while [ -z "$root" ] && [ $i -lt 400 ]; do
	for d in /sys/block/vd*; do
		[ "$(cat "$d/serial" 2>/dev/null)" = ` + RootSerial + ` ] && root=/dev/${d##*/}
	done
	[ -n "$root" ] || sleep 0.05
	i=$((i+1))
done
[ -n "$root" ] || { echo "vmtests: no root disk"; poweroff -f; }
# A tampered boot: extend a PCR before anything in the root file system runs.
if [ -f /run/vmtest/tamper-pcr ]; then
	pcrextend -pcr "$(cat /run/vmtest/tamper-pcr)" -data evil-bootloader && echo "vmtests: PCR $(cat /run/vmtest/tamper-pcr) extended"
fi
mount -t ext4 -o rw "$root" /newroot || { echo "vmtests: mount $root failed"; poweroff -f; }
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/vmtest
cp -a /run/. /newroot/run/
cp -a /steps /newroot/run/vmtest/steps
cp /etc/boot.env /etc/lib.sh /newroot/run/vmtest/
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
`

// BuildSystemdInitramfs returns the systemd guest's initramfs: busybox, the modules
// that reach the root disk, binaries (guest path -> host file; /bin/pcrextend for
// tampered boots) and systemdInit.
func BuildSystemdInitramfs(busybox string, mods []Module, binaries map[string]string) ([]byte, error) {
	e := &Env{Modules: mods, Binaries: binaries}
	if err := e.BuildInitramfs(busybox); err != nil {
		return nil, err
	}
	a := NewArchive()
	a.File("/init", []byte(systemdInit), 0o755)
	a.Dir("/run", 0o755)
	a.Dir("/newroot", 0o755)
	var b strings.Builder
	if _, err := a.WriteTo(&b); err != nil {
		return nil, err
	}
	// A later archive's /init overrides the base one's.
	return append(e.Initramfs, b.String()...), nil
}

// systemdFiles are the files MakeRootImage adds to every systemd guest.
var systemdFiles = map[string]string{
	"/usr/local/sbin/vmtest-run":           guestRunner,
	"/etc/systemd/system/vmtest.service":   guestRunnerUnit,
	"/etc/fstab":                           "LABEL=vmroot / ext4 defaults 0 1\n",
	"/etc/hostname":                        "vmtest\n",
	"/etc/systemd/journald.conf.d/vm.conf": "[Journal]\nStorage=persistent\n",
	// A boot that falls into emergency mode reports nothing: show why on the
	// console and power off at once instead of waiting for the harness deadline.
	"/etc/systemd/system/emergency.service.d/vmtest.conf": "[Service]\nExecStart=\nExecStart=/bin/sh -c 'systemctl --failed --no-pager; journalctl -b -p warning --no-pager | tail -n 60; systemctl --force poweroff'\nStandardOutput=tty\n",
}

// RootImage describes the per-run root disk image built from the cached tarball.
type RootImage struct {
	// Path is the ext4 image file.
	Path string
	// Size is its size in bytes (sparse).
	Size int64
}

// MakeRootImage unpacks tar into a scratch folder under dir, installs deb with dpkg
// (maintainer scripts run chrooted into it, as on a real machine), adds the step runner
// and files (guest path -> contents, mode 0644 unless the path is under /etc/diskcryptd
// or /root), and writes an ext4 image of size bytes with mkfs.ext4 -d: no loop
// device, no mount.
func MakeRootImage(ctx context.Context, tar, deb, dir string, size int64, files map[string]string) (*RootImage, error) {
	tree, err := os.MkdirTemp(dir, "rootfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree)
	run := func(name string, args ...string) error {
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("tar", "-xpf", tar, "-C", tree, "--numeric-owner"); err != nil {
		return nil, err
	}
	if err := run("dpkg", "--root="+tree, "--force-unsafe-io", "-i", deb); err != nil {
		return nil, err
	}
	all := map[string]string{}
	for p, c := range systemdFiles {
		all[p] = c
	}
	for p, c := range files {
		all[p] = c
	}
	for p, c := range all {
		mode := os.FileMode(0o644)
		switch {
		case strings.HasPrefix(p, "/usr/local/sbin/"):
			mode = 0o755
		case strings.HasPrefix(p, "/etc/diskcryptd/"), strings.HasPrefix(p, "/root/"):
			mode = 0o600
		}
		hp := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(hp, []byte(c), mode); err != nil {
			return nil, err
		}
		if err := os.Chmod(hp, mode); err != nil {
			return nil, err
		}
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink("/etc/systemd/system/vmtest.service", filepath.Join(wants, "vmtest.service")); err != nil {
		return nil, err
	}
	// The guest has no network and no clock source worth waiting for.
	for _, u := range []string{"systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"} {
		_ = os.Symlink("/dev/null", filepath.Join(tree, "etc/systemd/system", u))
	}
	img := filepath.Join(dir, "root.img")
	os.Remove(img)
	if err := run("mkfs.ext4", "-q", "-F", "-L", "vmroot", "-E", "root_owner=0:0", "-d", tree, img, fmt.Sprintf("%dK", size>>10)); err != nil {
		return nil, err
	}
	return &RootImage{Path: img, Size: size}, nil
}

// CloneRootDisk attaches a sparse copy of img to m as its first disk (serial "root").
func (m *Machine) CloneRootDisk(ctx context.Context, img *RootImage) error {
	p := filepath.Join(m.Dir, "root.img")
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", img.Path, p).CombinedOutput(); err != nil {
		return fmt.Errorf("copy root image: %w\n%s", err, out)
	}
	m.Disks = append([]Disk{{Serial: RootSerial, Path: p}}, m.Disks...)
	return nil
}
