package vmtests

import (
	"bytes"
	"crypto/aes"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strconv"
	"strings"
	"testing"

	xxts "golang.org/x/crypto/xts"
)

// onlineScript formats and maps the data disk, fills the mapping with random data
// (region A, the first half, fixed; region B, the second half, rewritten by a
// writer in passes), then rotates the volume key with diskcryptd reencrypt while
// the mapping stays open: a writer keeps rewriting region B chunk by chunk (each
// pass with other random data, fsync after every chunk) and a reader keeps
// re-reading region A past the page cache and checking its hash. Afterwards every
// byte of both regions must be what was last written, the mapping must still be
// the same device, and the plaintext hash is printed for the host.
const onlineScript = `
dev=$(mapped data)
vdb=$(disk data0)
size=$(blockdev --getsize64 $dev)
[ "$size" = $((48*1024*1024)) ] || { echo "mapping is $size bytes, want 48 MiB" >&2; exit 1; }
devno=$(stat -L -c %t:%T $dev)
dd if=/dev/urandom of=/tmp/a bs=1M count=24 2>/dev/null
dd if=/dev/urandom of=/tmp/w0 bs=1M count=24 2>/dev/null
dd if=/dev/urandom of=/tmp/w1 bs=1M count=24 2>/dev/null
dd if=/tmp/a of=$dev bs=1M conv=fsync 2>/dev/null
dd if=/tmp/w0 of=$dev bs=1M seek=24 conv=fsync 2>/dev/null
ha=$(sha256sum </tmp/a | cut -d' ' -f1)
i=0
while [ $i -lt 24 ]; do
	dd if=/tmp/a bs=1M skip=$i count=1 2>/dev/null | sha256sum | cut -d' ' -f1 >/tmp/ha.$i
	i=$((i+1))
done
echo "0 23" >/tmp/wlog
: >/tmp/rlog
(
	p=1
	while [ ! -e /tmp/stop ]; do
		i=0
		while [ $i -lt 24 ] && [ ! -e /tmp/stop ]; do
			dd if=/tmp/w$((p%2)) of=$dev bs=1M skip=$i seek=$((24+i)) count=1 conv=fsync 2>/dev/null
			echo "$p $i" >>/tmp/wlog
			i=$((i+1))
		done
		p=$((p+1))
	done
) &
wpid=$!
(
	i=0
	while [ ! -e /tmp/stop ]; do
		echo 3 >/proc/sys/vm/drop_caches
		h=$(dd if=$dev bs=1M skip=$i count=1 2>/dev/null | sha256sum | cut -d' ' -f1)
		if [ "$h" = "$(cat /tmp/ha.$i)" ]; then echo "ok $i" >>/tmp/rlog; else echo "MISMATCH $i $h" >>/tmp/rlog; fi
		i=$(((i+1)%24))
	done
) &
rpid=$!
sleep 1
w0=$(wc -l </tmp/wlog); r0=$(wc -l </tmp/rlog)
rc=0
t0=$(uptime_s)
diskcryptd reencrypt --key-file /etc/pass --pbkdf pbkdf2 --pbkdf-force-iterations 1000 $vdb || rc=$?
w1=$(wc -l </tmp/wlog); r1=$(wc -l </tmp/rlog)
echo "rotation-seconds $t0 $(uptime_s)"
touch /tmp/stop
wait $wpid $rpid || true
echo "reencrypt-exit $rc"
echo "writes-during $((w1-w0)) reads-during $((r1-r0))"
echo "mismatches $(grep -c MISMATCH /tmp/rlog || true)"
[ "$(stat -L -c %t:%T $dev)" = "$devno" ] && echo "same-mapping yes"
# Expected region B: chunks up to the last written one from its pass, the rest
# from the pass before.
set -- $(tail -n 1 /tmp/wlog)
P=$1; I=$2
: >/tmp/b
i=0
while [ $i -lt 24 ]; do
	if [ $i -le $I ]; then q=$P; else q=$((P-1)); fi
	dd if=/tmp/w$((q%2)) bs=1M skip=$i count=1 2>/dev/null >>/tmp/b
	i=$((i+1))
done
echo "last-write $P $I"
echo 3 >/proc/sys/vm/drop_caches
[ "$(dd if=$dev bs=1M count=24 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$ha" ] && echo "region-a ok"
[ "$(dd if=$dev bs=1M skip=24 count=24 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$(sha256sum </tmp/b | cut -d' ' -f1)" ] && echo "region-b ok"
echo "plain $(cat /tmp/a /tmp/b | sha256sum | cut -d' ' -f1)"
`

// TestOnlineRotation: `diskcryptd reencrypt` on a mapped volume in use rotates it
// online (the mapping stays open; a writer and a reader run throughout), every byte
// written before and during the rotation reads back, the 1 MiB chunks of region A
// re-read during the rotation, the volume re-opens with the passphrase after lock/unlock, and the image decrypts on the host, with the new
// volume key that cryptsetup reads, through golang.org/x/crypto/xts to the same
// plaintext.
func TestOnlineRotation(t *testing.T) {
	e := setup(t)
	needHost(t, "cryptsetup")
	need(t, e, "diskcryptd")
	f := newFixture(t, e)
	b := boot(t, f.m, map[string][]byte{passFile: f.pass},
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "vk-old", Script: "diskcryptd dump --volume-key --key-file " + passFile + " $(disk data0) | sha256sum"},
		Step{Name: "unlock", Script: "diskcryptd unlock --key-file " + passFile + " $(disk data0) data"},
		Step{Name: "online", Script: onlineScript},
		Step{Name: "lock", Script: "diskcryptd lock data\n! test -e /dev/mapper/data"},
		Step{Name: "vk-new", Script: "diskcryptd dump --volume-key --key-file " + passFile + " $(disk data0) | sha256sum"},
		Step{Name: "reopen", Script: "diskcryptd unlock --key-file " + passFile + " $(disk data0) data\n" +
			"echo 3 >/proc/sys/vm/drop_caches\necho \"plain $(dd if=$(mapped data) bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)\"\ndiskcryptd lock data"},
		Step{Name: "dump", Script: "diskcryptd dump --json $(disk data0)"},
	)
	for _, s := range []string{"format", "vk-old", "unlock", "online", "lock", "vk-new", "reopen", "dump"} {
		ok(t, b, s)
	}
	out := string(b.Result("online").Stdout)
	t.Logf("online step (%.1fs uptime at end):\n%s%s", b.Result("online").Uptime, out, b.Result("online").Stderr)
	for _, want := range []string{"reencrypt-exit 0\n", "rotated online (mapping data stayed open)", "mismatches 0\n", "same-mapping yes\n", "region-a ok\n", "region-b ok\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("online step lacks %q", want)
		}
	}
	m := regexp.MustCompile(`writes-during (\d+) reads-during (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no writes/reads count")
	}
	if w, _ := strconv.Atoi(m[1]); w == 0 {
		t.Errorf("no chunk was written during the rotation")
	}
	if r, _ := strconv.Atoi(m[2]); r == 0 {
		t.Errorf("region A was never re-read during the rotation")
	}
	plain := regexp.MustCompile(`plain ([0-9a-f]{64})`).FindStringSubmatch(out)
	reopen := regexp.MustCompile(`plain ([0-9a-f]{64})`).FindStringSubmatch(string(b.Result("reopen").Stdout))
	if plain == nil || reopen == nil || plain[1] != reopen[1] {
		t.Fatalf("plaintext after re-open differs from what was written: %v / %v", plain, reopen)
	}
	if bytes.Equal(b.Result("vk-old").Stdout, b.Result("vk-new").Stdout) {
		t.Errorf("the volume key did not change")
	}
	if d := string(b.Result("dump").Stdout); strings.Contains(d, "online-reencrypt") || strings.Contains(d, "backup-") {
		t.Errorf("re-encryption metadata left behind:\n%s", d)
	}

	// Host: cryptsetup reads the new key; an independent XTS decrypts the image.
	ctx := t.Context()
	vk, err := VolumeKey(ctx, f.img, f.passPath, f.m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := ReadSegment(ctx, f.img)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := ReadAt(f.img, seg.Offset, 48<<20)
	if err != nil {
		t.Fatal(err)
	}
	c, err := xxts.NewCipher(aes.NewCipher, vk)
	if err != nil {
		t.Fatal(err)
	}
	ss := seg.SectorSize
	for off := 0; off < len(ct); off += ss {
		c.Decrypt(ct[off:off+ss], ct[off:off+ss], seg.IVTweak+uint64(off/512))
	}
	sum := sha256.Sum256(ct)
	if got := hex.EncodeToString(sum[:]); got != plain[1] {
		t.Errorf("the image decrypted with the new volume key (x/crypto/xts) hashes to %s, the guest wrote %s", got, plain[1])
	}
	if t.Failed() {
		return
	}
	t.Logf("online rotation: every byte of 48 MiB checked in the guest and on the host (x/crypto/xts, new key from cryptsetup)")
}

// onlineMountedScript makes an ext2 filesystem (busybox mke2fs, the kernel's ext4
// driver) on the mapping, mounts it, writes a 16 MiB file, then rotates the volume
// key (interrupted with SIGINT after a few 1 MiB hotzones, the mapping left split
// between the keys, then finished with --resume-only, still online) while a writer keeps creating new files (sync after each) and a reader keeps
// re-reading the first file past the page cache. Every file's checksum is checked
// after the rotation, after a remount, and after lock/unlock.
const onlineMountedScript = `
dev=$(mapped data)
vdb=$(disk data0)
mke2fs -q -b 4096 $dev >/dev/null
mkdir -p /mnt
mount -t ext2 $dev /mnt
dd if=/dev/urandom of=/mnt/a bs=1M count=16 2>/dev/null
sync
sha256sum /mnt/a >/tmp/sums0
cp /tmp/sums0 /tmp/sums
: >/tmp/rlog
mkdir /mnt/new
(
	n=0
	while [ ! -e /tmp/stop ]; do
		dd if=/dev/urandom of=/tmp/f bs=64k count=4 2>/dev/null
		cp /tmp/f /mnt/new/$n
		sync
		echo "$(sha256sum </tmp/f | cut -d' ' -f1)  /mnt/new/$n" >>/tmp/sums
		n=$((n+1))
	done
) &
wpid=$!
(
	while [ ! -e /tmp/stop ]; do
		echo 3 >/proc/sys/vm/drop_caches
		if sha256sum -c -s /tmp/sums0; then echo ok >>/tmp/rlog; else echo MISMATCH >>/tmp/rlog; fi
	done
) &
rpid=$!
sleep 1
w0=$(wc -l </tmp/sums); r0=$(wc -l </tmp/rlog)
rc=0
irc=0
: >/tmp/prog
diskcryptd reencrypt --json --hotzone-size 1M --key-file /etc/pass --pbkdf pbkdf2 --pbkdf-force-iterations 1000 $vdb >/tmp/prog 2>/tmp/rerr &
epid=$!
i=0
while [ $(wc -l </tmp/prog) -lt 4 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
kill -INT $epid
wait $epid || irc=$?
echo "interrupted-exit $irc $(grep -c 'interrupted' /tmp/rerr || true)"
ls /mnt/a >/dev/null && echo "usable-between yes"
diskcryptd reencrypt --resume-only --key-file /etc/pass $vdb || rc=$?
w1=$(wc -l </tmp/sums); r1=$(wc -l </tmp/rlog)
touch /tmp/stop
wait $wpid $rpid || true
echo "reencrypt-exit $rc"
echo "writes-during $((w1-w0)) reads-during $((r1-r0))"
echo "mismatches $(grep -c MISMATCH /tmp/rlog || true)"
echo 3 >/proc/sys/vm/drop_caches
sha256sum -c -s /tmp/sums && echo "files ok $(wc -l </tmp/sums)"
umount /mnt
mount -t ext2 $dev /mnt
sha256sum -c -s /tmp/sums && echo "remount ok"
umount /mnt
diskcryptd lock data
diskcryptd unlock --key-file /etc/pass $vdb data
mount -t ext2 -o ro $(mapped data) /mnt
sha256sum -c -s /tmp/sums && echo "reopen ok"
umount /mnt
diskcryptd lock data
`

// TestOnlineRotationMounted: the volume stays mounted (ext2) and written during an
// online rotation, interrupted and resumed online; every file written before and during it reads back, after a
// remount and after lock/unlock with the passphrase (which now opens the new key).
func TestOnlineRotationMounted(t *testing.T) {
	e := setup(t)
	need(t, e, "diskcryptd")
	f := newFixture(t, e)
	b := boot(t, f.m, map[string][]byte{passFile: f.pass},
		Step{Name: "format", Script: "diskcryptd format --key-file " + passFile + " " + formatFlags + " $(disk data0)"},
		Step{Name: "unlock", Script: "diskcryptd unlock --key-file " + passFile + " $(disk data0) data"},
		Step{Name: "online", Script: onlineMountedScript},
	)
	ok(t, b, "format")
	ok(t, b, "unlock")
	r := b.Result("online")
	if r == nil {
		t.Fatal("online step did not run")
	}
	out := string(r.Stdout)
	t.Logf("online step (exit %d, %.1fs uptime at end):\n%s%s", r.Exit, r.Uptime, out, r.Stderr)
	if !regexp.MustCompile(`interrupted-exit [1-9]\d* [1-9]`).MatchString(out) {
		t.Errorf("the first run was not interrupted by SIGINT")
	}
	for _, want := range []string{"usable-between yes\n", "rotated online (mapping data stayed open)", "reencrypt-exit 0\n", "mismatches 0\n", "files ok ", "remount ok\n", "reopen ok\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("online step lacks %q", want)
		}
	}
	m := regexp.MustCompile(`writes-during (\d+) reads-during (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no writes/reads count")
	}
	if w, _ := strconv.Atoi(m[1]); w == 0 {
		t.Errorf("no file was written during the rotation")
	}
	if n, _ := strconv.Atoi(m[2]); n == 0 {
		t.Errorf("the first file was never re-read during the rotation")
	}
}
