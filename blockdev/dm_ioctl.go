package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The device-mapper ioctl interface, from the kernel's
// include/uapi/linux/dm-ioctl.h (interface version 4).

// DMControlPath is the device-mapper control node.
const DMControlPath = "/dev/mapper/control"

const (
	dmIoctlMagic = 0xfd

	dmHeaderSize     = 312 // sizeof(struct dm_ioctl)
	dmTargetSpecSize = 40  // sizeof(struct dm_target_spec)
	dmNameLen        = 128
	dmUUIDLen        = 129
	dmMaxTypeName    = 16

	dmVersionMajor = 4
	dmVersionMinor = 0
	dmVersionPatch = 0

	dmInitialBuffer = 16 << 10
	dmMaxBuffer     = 16 << 20
)

// ioctl command numbers (enum in dm-ioctl.h).
const (
	dmVersionCmd     = 0
	dmListDevicesCmd = 2
	dmDevCreateCmd   = 3
	dmDevRemoveCmd   = 4
	dmDevSuspendCmd  = 6
	dmDevStatusCmd   = 7
	dmTableLoadCmd   = 9
	dmTableClearCmd  = 10
	dmTableStatusCmd = 12
)

// struct dm_ioctl flags.
const (
	dmReadonlyFlag       = 1 << 0
	dmSuspendFlag        = 1 << 1
	dmStatusTableFlag    = 1 << 4
	dmActivePresentFlag  = 1 << 5
	dmBufferFullFlag     = 1 << 8
	dmSecureDataFlag     = 1 << 15
	dmDeferredRemoveFlag = 1 << 17
)

// dmIoctlNumber computes _IOWR(DM_IOCTL, cmd, struct dm_ioctl).
func dmIoctlNumber(cmd uintptr) uintptr {
	const iocWrite, iocRead = 1, 2
	return (iocRead|iocWrite)<<30 | dmHeaderSize<<16 | dmIoctlMagic<<8 | cmd
}

// dmHeader is the decoded struct dm_ioctl of a reply.
type dmHeader struct {
	version     [3]uint32
	dataSize    uint32
	dataStart   uint32
	targetCount uint32
	openCount   int32
	flags       uint32
	eventNr     uint32
	dev         uint64
	name        string
	uuid        string
}

// dmRequest is one ioctl: a header plus an optional payload.
type dmRequest struct {
	cmd     uintptr
	name    string
	uuid    string
	flags   uint32
	eventNr uint32
	// payload is copied after the header. When it holds secrets the whole
	// buffer is wiped after the call (it always is).
	payload     []byte
	targetCount uint32
}

// dmError describes a failed device-mapper ioctl.
type dmError struct {
	op   string
	name string
	err  unix.Errno
}

func (e *dmError) Error() string {
	if e.name == "" {
		return fmt.Sprintf("blockdev: device-mapper %s: %v", e.op, e.err)
	}
	return fmt.Sprintf("blockdev: device-mapper %s %s: %v", e.op, e.name, e.err)
}

func (e *dmError) Unwrap() []error {
	var sentinel error
	switch e.err {
	case unix.ENXIO:
		sentinel = ErrMappingNotFound
	case unix.EBUSY:
		sentinel = ErrBusy
	case unix.EEXIST:
		sentinel = ErrMappingExists
	}
	if sentinel == nil {
		return []error{e.err}
	}
	return []error{sentinel, e.err}
}

var dmOpNames = map[uintptr]string{
	dmVersionCmd: "version", dmListDevicesCmd: "list", dmDevCreateCmd: "create",
	dmDevRemoveCmd: "remove", dmDevSuspendCmd: "suspend/resume", dmDevStatusCmd: "status",
	dmTableLoadCmd: "table load", dmTableClearCmd: "table clear", dmTableStatusCmd: "table status",
}

// dmControl is an open /dev/mapper/control.
type dmControl struct {
	f *os.File
	// ioctl issues one request; tests replace it with a fake kernel.
	ioctl func(cmd uintptr, buf []byte) unix.Errno
}

func (c *dmControl) sysIoctl(cmd uintptr, buf []byte) unix.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, c.f.Fd(), dmIoctlNumber(cmd), uintptr(unsafe.Pointer(&buf[0])))
	return errno
}

// ErrNoDeviceMapper is matched (errors.Is) when the kernel offers no
// device-mapper (no /dev/mapper/control, or dm-mod not loaded).
var ErrNoDeviceMapper = errors.New("device-mapper is not available (load dm-mod and dm-crypt)")

func openDMControl() (*dmControl, error) {
	f, err := os.OpenFile(DMControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			return nil, fmt.Errorf("blockdev: %w: %w", ErrNoDeviceMapper, err)
		}
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	c := &dmControl{f: f}
	c.ioctl = c.sysIoctl
	return c, nil
}

func (c *dmControl) Close() error {
	if c.f == nil {
		return nil
	}
	return c.f.Close()
}

// do runs one ioctl and returns the reply header and the reply data (a copy,
// which the caller wipes when it may hold secrets). The ioctl buffer itself
// is wiped before do returns. When the kernel reports a full buffer, do
// retries with a larger one.
func (c *dmControl) do(req *dmRequest) (*dmHeader, []byte, error) {
	if len(req.name) >= dmNameLen || len(req.uuid) >= dmUUIDLen {
		return nil, nil, fmt.Errorf("blockdev: device-mapper name or uuid too long: %q %q", req.name, req.uuid)
	}
	size := dmInitialBuffer
	if n := dmHeaderSize + len(req.payload); n > size {
		size = n
	}
	for {
		buf := make([]byte, size)
		hdr, data, err := c.doBuf(req, buf)
		clear(buf)
		if err != nil {
			return nil, nil, err
		}
		if hdr.flags&dmBufferFullFlag != 0 {
			clear(data)
			if size >= dmMaxBuffer {
				return nil, nil, fmt.Errorf("blockdev: device-mapper %s: reply larger than %d bytes", dmOpNames[req.cmd], dmMaxBuffer)
			}
			size *= 4
			continue
		}
		return hdr, data, nil
	}
}

func (c *dmControl) doBuf(req *dmRequest, buf []byte) (*dmHeader, []byte, error) {
	bo := byteOrder() // struct dm_ioctl is in host byte order
	put32 := func(off int, v uint32) { bo.PutUint32(buf[off:], v) }
	get32 := func(off int) uint32 { return bo.Uint32(buf[off:]) }
	get64 := func(off int) uint64 { return bo.Uint64(buf[off:]) }
	put32(0, dmVersionMajor)
	put32(4, dmVersionMinor)
	put32(8, dmVersionPatch)
	put32(12, uint32(len(buf))) // data_size: the whole buffer
	put32(16, dmHeaderSize)     // data_start
	put32(20, req.targetCount)  // target_count
	put32(28, req.flags)        // flags
	put32(32, req.eventNr)      // event_nr
	copy(buf[48:48+dmNameLen], req.name)
	copy(buf[176:176+dmUUIDLen], req.uuid)
	copy(buf[dmHeaderSize:], req.payload)

	if errno := c.ioctl(req.cmd, buf); errno != 0 {
		return nil, nil, &dmError{op: dmOpNames[req.cmd], name: req.name, err: errno}
	}
	h := &dmHeader{
		version:     [3]uint32{get32(0), get32(4), get32(8)},
		dataSize:    get32(12),
		dataStart:   get32(16),
		targetCount: get32(20),
		openCount:   int32(get32(24)),
		flags:       get32(28),
		eventNr:     get32(32),
		dev:         get64(40),
		name:        cstring(buf[48 : 48+dmNameLen]),
		uuid:        cstring(buf[176 : 176+dmUUIDLen]),
	}
	var data []byte
	if h.flags&dmBufferFullFlag == 0 && h.dataStart >= dmHeaderSize && h.dataStart <= h.dataSize && int(h.dataSize) <= len(buf) {
		data = bytes.Clone(buf[h.dataStart:h.dataSize])
	}
	return h, data, nil
}

var hostLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// encodeTarget appends a struct dm_target_spec and its NUL-terminated
// params (padded to 8 bytes) to dst. params may hold a key: callers wipe dst.
func encodeTarget(dst []byte, start, length uint64, typ string, params []byte) []byte {
	n := dmTargetSpecSize + len(params) + 1
	n = (n + 7) &^ 7
	off := len(dst)
	dst = append(dst, make([]byte, n)...)
	spec := dst[off:]
	bo := byteOrder()
	bo.PutUint64(spec[0:], start)
	bo.PutUint64(spec[8:], length)
	// status (int32) at 16 is zero on input; next at 20 is the offset of
	// the following spec from the start of this one.
	bo.PutUint32(spec[20:], uint32(n))
	copy(spec[24:24+dmMaxTypeName-1], typ)
	copy(spec[dmTargetSpecSize:], params)
	return dst
}

// dmTarget is one decoded target of a table or status reply.
type dmTarget struct {
	start, length uint64
	typ           string
	params        []byte
}

// decodeTargets parses count target specs from a reply's data.
func decodeTargets(data []byte, count uint32) ([]dmTarget, error) {
	bo := byteOrder()
	var out []dmTarget
	off := 0
	for i := uint32(0); i < count; i++ {
		if off < 0 || off+dmTargetSpecSize > len(data) {
			return nil, errors.New("blockdev: device-mapper: truncated target list")
		}
		spec := data[off:]
		t := dmTarget{
			start:  bo.Uint64(spec[0:]),
			length: bo.Uint64(spec[8:]),
			typ:    cstring(spec[24 : 24+dmMaxTypeName]),
		}
		next := int(bo.Uint32(spec[20:]))
		p := spec[dmTargetSpecSize:]
		if j := bytes.IndexByte(p, 0); j >= 0 {
			p = p[:j]
		}
		t.params = p
		out = append(out, t)
		// In replies, next is the offset from the start of the data area.
		if next <= off && i+1 < count {
			return nil, errors.New("blockdev: device-mapper: bad target list")
		}
		off = next
	}
	return out, nil
}

func byteOrder() binary.ByteOrder {
	if hostLittleEndian {
		return binary.LittleEndian
	}
	return binary.BigEndian
}
