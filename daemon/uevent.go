package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Uevent is one kernel object event (see the kernel's lib/kobject_uevent.c): the
// header "ACTION@DEVPATH" followed by NUL-separated KEY=VALUE pairs.
type Uevent struct {
	// Action is "add", "remove", "change", "move", "online", "offline", "bind" or
	// "unbind".
	Action string
	// DevPath is the sysfs path below /sys, e.g. /devices/pci0000:00/.../block/vdb.
	DevPath string
	// Subsystem is e.g. "block".
	Subsystem string
	// DevName is the node name below /dev, e.g. "vdb" (empty for objects without a
	// node).
	DevName string
	// DevType is e.g. "disk" or "partition".
	DevType string
	// Major and Minor are the device number, when the event carries one.
	Major, Minor uint32
	// HasDevNum reports whether MAJOR and MINOR were present.
	HasDevNum bool
	// Seq is the kernel's SEQNUM.
	Seq uint64
	// Env holds every KEY=VALUE pair.
	Env map[string]string
}

// ErrBadUevent is returned by ParseUevent for a message that is not a kernel uevent.
var ErrBadUevent = errors.New("daemon: not a kernel uevent")

// maxUevent bounds a uevent message (the kernel's UEVENT_BUFFER_SIZE is 2048 bytes of
// environment, plus the header).
const maxUevent = 16 << 10

// ParseUevent parses one kernel uevent message as read from a NETLINK_KOBJECT_UEVENT
// socket. Messages from udev (which start with "libudev\0") are refused: the daemon
// listens to the kernel, not to udev.
func ParseUevent(msg []byte) (*Uevent, error) {
	if len(msg) == 0 || len(msg) > maxUevent {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadUevent, len(msg))
	}
	fields := bytes.Split(bytes.TrimRight(msg, "\x00"), []byte{0})
	action, devpath, ok := bytes.Cut(fields[0], []byte("@"))
	if !ok || len(action) == 0 || len(devpath) == 0 || devpath[0] != '/' {
		return nil, fmt.Errorf("%w: header %.40q", ErrBadUevent, fields[0])
	}
	u := &Uevent{Action: string(action), DevPath: string(devpath), Env: map[string]string{}}
	for _, f := range fields[1:] {
		k, v, ok := bytes.Cut(f, []byte("="))
		if !ok || len(k) == 0 {
			return nil, fmt.Errorf("%w: field %.40q", ErrBadUevent, f)
		}
		u.Env[string(k)] = string(v)
	}
	if a, ok := u.Env["ACTION"]; ok && a != u.Action {
		return nil, fmt.Errorf("%w: ACTION %q differs from the header's %q", ErrBadUevent, a, u.Action)
	}
	if p, ok := u.Env["DEVPATH"]; ok && p != u.DevPath {
		return nil, fmt.Errorf("%w: DEVPATH %q differs from the header's %q", ErrBadUevent, p, u.DevPath)
	}
	u.Subsystem, u.DevName, u.DevType = u.Env["SUBSYSTEM"], u.Env["DEVNAME"], u.Env["DEVTYPE"]
	maj, hasMaj := u.Env["MAJOR"]
	min, hasMin := u.Env["MINOR"]
	if hasMaj != hasMin {
		return nil, fmt.Errorf("%w: MAJOR without MINOR", ErrBadUevent)
	}
	if hasMaj {
		a, err1 := strconv.ParseUint(maj, 10, 32)
		b, err2 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%w: device number %q:%q", ErrBadUevent, maj, min)
		}
		u.Major, u.Minor, u.HasDevNum = uint32(a), uint32(b), true
	}
	if s, ok := u.Env["SEQNUM"]; ok {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: SEQNUM %q", ErrBadUevent, s)
		}
		u.Seq = n
	}
	return u, nil
}

// DevNum returns the event's device number in the form blockdev.DevNum uses.
func (u *Uevent) DevNum() uint64 { return unix.Mkdev(u.Major, u.Minor) }

// UeventSource delivers kernel uevents. Next blocks until an event arrives or ctx ends.
type UeventSource interface {
	Next(ctx context.Context) (*Uevent, error)
}

// NetlinkUevents reads kernel uevents from a NETLINK_KOBJECT_UEVENT socket (no udev
// needed). It accepts only messages the kernel sent (sender port 0).
type NetlinkUevents struct {
	fd  int
	buf []byte
}

// OpenNetlinkUevents opens and binds the socket to the kernel's uevent group. The
// socket sees only the network namespace's events: run the daemon in the initial one.
func OpenNetlinkUevents() (*NetlinkUevents, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("daemon: uevent socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("daemon: uevent socket: %w", err)
	}
	// A 1 s receive timeout lets Next notice a cancelled context.
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("daemon: uevent socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	return &NetlinkUevents{fd: fd, buf: make([]byte, maxUevent+1)}, nil
}

// Next returns the next kernel uevent that parses; malformed or foreign messages are
// skipped.
func (n *NetlinkUevents) Next(ctx context.Context) (*Uevent, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		k, from, err := unix.Recvfrom(n.fd, n.buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Events were lost; the caller rescans on the next one anyway.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("daemon: uevent socket: %w", err)
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		if u, err := ParseUevent(n.buf[:k]); err == nil {
			return u, nil
		}
	}
}

// Close closes the socket.
func (n *NetlinkUevents) Close() error { return unix.Close(n.fd) }
