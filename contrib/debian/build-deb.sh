#!/bin/sh
# build-deb.sh BINARY VERSION OUTPUT.deb — assemble the diskcryptd Debian package from
# the repository (run from its top) with dpkg-deb alone: no debhelper, no network.
#
# Contents: /usr/sbin/diskcryptd (the static binary), the systemd unit, the example
# configuration, the initramfs-tools hook and local-top script, the dracut module, the
# man page diskcryptd(8) and the operations guide.
set -eu
bin=$1 version=$2 out=$3
case $version in [0-9]*) ;; *) echo "build-deb: version $version must start with a digit" >&2; exit 1 ;; esac
if readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
	echo "build-deb: $bin is dynamically linked; build it with make static" >&2
	exit 1
fi
root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
umask 022
d=$root
install -D -m 0755 "$bin" "$d/usr/sbin/diskcryptd"
install -D -m 0644 contrib/systemd/diskcryptd.service "$d/lib/systemd/system/diskcryptd.service"
install -D -m 0644 contrib/diskcryptd.conf.example "$d/usr/share/doc/diskcryptd/examples/diskcryptd.conf"
install -D -m 0644 contrib/initramfs-tools/initramfs.conf.example "$d/usr/share/doc/diskcryptd/examples/initramfs.conf"
install -D -m 0755 contrib/initramfs-tools/hooks/diskcryptd "$d/usr/share/initramfs-tools/hooks/diskcryptd"
install -D -m 0755 contrib/initramfs-tools/scripts/local-top/diskcryptd "$d/usr/share/initramfs-tools/scripts/local-top/diskcryptd"
install -D -m 0755 contrib/initramfs/diskcryptd-initramfs-unlock "$d/usr/lib/diskcryptd/diskcryptd-initramfs-unlock"
for f in contrib/dracut/90diskcryptd/*; do
	install -D -m 0755 "$f" "$d/usr/lib/dracut/modules.d/90diskcryptd/$(basename "$f")"
done
install -D -m 0644 docs/operations.md "$d/usr/share/doc/diskcryptd/operations.md"
install -D -m 0644 contrib/debian/copyright "$d/usr/share/doc/diskcryptd/copyright"
install -d -m 0755 "$d/usr/share/man/man8"
gzip -9n <contrib/man/diskcryptd.8 >"$d/usr/share/man/man8/diskcryptd.8.gz"
install -d -m 0755 "$d/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" contrib/debian/control.in >"$d/DEBIAN/control"
for s in postinst prerm postrm; do
	install -m 0755 "contrib/debian/$s" "$d/DEBIAN/$s"
done
(cd "$d" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum) >"$d/DEBIAN/md5sums"
chmod 0644 "$d/DEBIAN/md5sums"
mkdir -p "$(dirname "$out")"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0} dpkg-deb --root-owner-group -Zxz --build "$d" "$out" >/dev/null
echo "$out"
