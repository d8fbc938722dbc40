package blockdev

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// FindAllByLUKSUUID probes every device in /sys/class/block and returns the nodes
// whose LUKS header carries uuid (case-insensitive), one per distinct device, in
// /sys order. Device-mapper devices (dm-*) are skipped: their content comes from
// other devices. More than one result means two devices claim the same volume (a
// cloned or planted disk); the daemon refuses to unlock either. Multipath setups, where
// several paths show one disk, are not told apart from clones.
func (f *Finder) FindAllByLUKSUUID(uuid string) ([]string, error) {
	if uuid == "" || strings.ContainsAny(uuid, "/\x00") {
		return nil, fmt.Errorf("blockdev: invalid UUID %q", uuid)
	}
	devs, err := f.blockDevices()
	if err != nil {
		return nil, err
	}
	var out []string
	var seen []devIdentity
	for _, d := range devs {
		if d.size == 0 || strings.HasPrefix(d.name, "dm-") {
			continue
		}
		sigs, err := probePath(d.node)
		if err != nil {
			continue
		}
		for _, s := range sigs {
			if s.Usage != UsageCrypto || !strings.EqualFold(s.UUID, uuid) {
				continue
			}
			id, err := identify(d.node)
			if err != nil {
				break
			}
			dup := false
			for _, o := range seen {
				dup = dup || o == id
			}
			if !dup {
				seen = append(seen, id)
				out = append(out, d.node)
			}
			break
		}
	}
	return out, nil
}

// devIdentity tells devices apart: the device number of a block device, the
// filesystem and inode of anything else (an image file standing in for a device).
type devIdentity struct {
	block    bool
	rdev     uint64
	dev, ino uint64
}

// identify returns the identity of the device at path (symlinks followed).
func identify(path string) (devIdentity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return devIdentity{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return identityOf(&st), nil
}

func identityOf(st *unix.Stat_t) devIdentity {
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		return devIdentity{block: true, rdev: st.Rdev}
	}
	return devIdentity{dev: st.Dev, ino: st.Ino}
}

// SameDevice reports whether the open device d and the node at path are the same
// device (the same device number for block devices, the same file otherwise).
func (d *Device) SameDevice(path string) bool {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return false
	}
	id, err := identify(path)
	return err == nil && id == identityOf(&st)
}
