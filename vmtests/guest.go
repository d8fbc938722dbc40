package vmtests

// initScript is the guest's /init. It mounts the pseudo file systems, loads the
// modules listed in /etc/modules.order, finds the virtio-serial port named "results",
// brings eth0 up when the machine has a network (NET_IP in /etc/boot.env), runs each
// /steps/NNN.sh in order and writes one length-prefixed record per step to
// that port, then powers the machine off. Every record starts with "@@NONCE ", a
// random per-boot value, so stale or stray bytes can never be taken for a result.
const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t tmpfs -o mode=0700 tmpfs /tmp
mount -t tmpfs tmpfs /run
. /etc/boot.env
while read -r m; do
	insmod "/lib/modules/$m.ko" || echo "vmtests: insmod $m failed"
done < /etc/modules.order
ip link set lo up 2>/dev/null
if [ -n "$NET_IP" ]; then
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.05; done
	ip addr add "$NET_IP/24" dev eth0 && ip link set eth0 up || echo "vmtests: eth0 setup failed"
fi
port=
i=0
while [ $i -lt 200 ]; do
	for d in /sys/class/virtio-ports/*; do
		[ "$(cat "$d/name" 2>/dev/null)" = results ] && port=/dev/${d##*/}
	done
	[ -n "$port" ] && [ -c "$port" ] && break
	port=
	i=$((i+1))
	sleep 0.05
done
if [ -z "$port" ]; then
	echo "vmtests: no virtio-serial port named results"
	poweroff -f
fi
exec 3>"$port"
printf '@@%s BOOT %s\n' "$NONCE" "$(cut -d' ' -f1 /proc/uptime)" >&3
for s in /steps/*.sh; do
	[ -f "$s" ] || continue
	n=${s##*/}
	n=${n%.sh}
	echo "vmtests: step $n"
	sh -e -c '. /etc/lib.sh; . "$1"' step "$s" >/run/.out 2>/run/.err </dev/null
	rc=$?
	printf '@@%s STEP %s %d %d %d %s\n' "$NONCE" "$n" "$rc" "$(wc -c </run/.out)" "$(wc -c </run/.err)" "$(cut -d' ' -f1 /proc/uptime)" >&3
	cat /run/.out /run/.err >&3
done
printf '@@%s END\n' "$NONCE" >&3
exec 3>&-
sync
poweroff -f
`

// libScript is sourced before every step. It gives steps a few helpers:
//
//	disk SERIAL      the /dev/vdX whose virtio serial is SERIAL
//	mapped NAME      the block device of the device-mapper mapping NAME
//	                 (/dev/mapper/NAME, or /dev/dm-N when nothing made that node)
//	uptime_s         seconds since boot, 10 ms resolution
const libScript = `# Files a step writes (key files, recovery keys) are private, as diskcryptd requires.
umask 077
disk() {
	for d in /sys/block/vd*; do
		if [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ]; then echo "/dev/${d##*/}"; return 0; fi
	done
	echo "no disk with serial $1" >&2
	return 1
}
mapped() {
	if [ -b "/dev/mapper/$1" ]; then echo "/dev/mapper/$1"; return 0; fi
	for d in /sys/block/dm-*; do
		if [ "$(cat "$d/dm/name" 2>/dev/null)" = "$1" ]; then echo "/dev/${d##*/}"; return 0; fi
	done
	echo "no mapping named $1" >&2
	return 1
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }
`
