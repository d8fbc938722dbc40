package blockdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel errors of the device-mapper functions (match with errors.Is).
var (
	// ErrMappingNotFound: no mapping by that name (ENXIO).
	ErrMappingNotFound = errors.New("device-mapper mapping not found")
	// ErrMappingExists: a mapping by that name or UUID exists (EEXIST).
	ErrMappingExists = errors.New("device-mapper mapping already exists")
)

// CreateOptions tunes DMCreate.
type CreateOptions struct {
	// ReadOnly creates a read-only mapping.
	ReadOnly bool
	// NodeTimeout bounds how long DMCreate waits for udev to create
	// /dev/mapper/NAME before creating the node itself; 0 means 2 s. Where
	// udev is not running DMCreate does not wait.
	NodeTimeout time.Duration
	// DevDir is where the node is created, "/dev/mapper" by default.
	DevDir string
}

// Mapping describes an active device-mapper device.
type Mapping struct {
	// Name is the mapping's name (/dev/mapper/NAME).
	Name string
	// UUID is the dm UUID, e.g. "CRYPT-LUKS2-<uuid>-<name>".
	UUID string
	// Dev is the mapping's device number; see DevNumString.
	Dev uint64
	// OpenCount is how many openers the device has.
	OpenCount int
	// ReadOnly reports a read-only table.
	ReadOnly bool
	// Suspended reports a suspended device.
	Suspended bool
	// Targets is the live table (filled by DMTable and DMList). Keys are
	// redacted.
	Targets []Target
	// Node is the device node path where one is known (after DMCreate).
	Node string
}

// Target is one line of a live table, with any key redacted.
type Target struct {
	// Start and Length are in 512-byte sectors.
	Start, Length uint64
	// Type is the target type, e.g. "crypt".
	Type string
	// Params is the table text with a crypt key replaced by "<redacted>".
	Params string
	// Crypt is the parsed crypt target (Key nil), when Type is "crypt" and
	// the params parse.
	Crypt *CryptTarget
}

// IsCrypt reports whether the mapping's first target is dm-crypt.
func (m *Mapping) IsCrypt() bool { return len(m.Targets) > 0 && m.Targets[0].Type == "crypt" }

// DMCreate creates the mapping name with dm UUID dmUUID and the single
// crypt target t, the way cryptsetup activates a LUKS2 volume: create,
// load the table (flagged as secure data so the kernel wipes its copy),
// resume. The key exists in clear only in the ioctl buffer, which is wiped
// afterwards; t.Key stays owned by the caller. On failure the half-made
// device is removed. It then makes sure /dev/mapper/NAME exists: it waits
// for udev where udev runs, and otherwise creates the node itself.
func DMCreate(ctx context.Context, name, dmUUID string, t *CryptTarget, opts CreateOptions) (*Mapping, error) {
	if err := checkMappingName(name); err != nil {
		return nil, err
	}
	if t == nil {
		return nil, errors.New("blockdev: DMCreate: nil target")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := openDMControl()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.create(ctx, name, dmUUID, t, opts)
}

func (c *dmControl) create(ctx context.Context, name, dmUUID string, t *CryptTarget, opts CreateOptions) (*Mapping, error) {
	hdr, _, err := c.do(&dmRequest{cmd: dmDevCreateCmd, name: name, uuid: dmUUID})
	if err != nil {
		// The kernel answers EBUSY for a name or UUID already in use.
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("%w: %w", ErrMappingExists, err)
		}
		return nil, err
	}
	m := &Mapping{Name: name, UUID: dmUUID, Dev: hdr.dev, ReadOnly: opts.ReadOnly}
	if err := loadAndResume(c, name, t, opts.ReadOnly); err != nil {
		if _, _, rerr := c.do(&dmRequest{cmd: dmDevRemoveCmd, name: name}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("blockdev: cleaning up %s: %w", name, rerr))
		}
		return nil, err
	}
	node, err := ensureNode(ctx, name, hdr.dev, opts)
	if err != nil {
		return m, err
	}
	m.Node = node
	return m, nil
}

func loadAndResume(c *dmControl, name string, t *CryptTarget, readOnly bool) error {
	params, err := t.Params()
	if err != nil {
		return err
	}
	payload := make([]byte, 0, dmTargetSpecSize+len(params)+8)
	payload = encodeTarget(payload, t.Start, t.Length, "crypt", params)
	clear(params)
	flags := uint32(dmSecureDataFlag)
	if readOnly {
		flags |= dmReadonlyFlag
	}
	_, data, err := c.do(&dmRequest{cmd: dmTableLoadCmd, name: name, flags: flags, payload: payload, targetCount: 1})
	clear(payload)
	clear(data)
	if err != nil {
		return err
	}
	// Resume: DM_DEV_SUSPEND without DM_SUSPEND_FLAG swaps in the table. The udev cookie
	// marks the resume's "change" uevent as the primary one (as libdevmapper does), so
	// udev's dm rules scan the new device and systemd sees it ready: without it
	// /dev/mapper/NAME never becomes a .device unit and /etc/fstab waits in vain.
	if _, _, err := c.do(&dmRequest{cmd: dmDevSuspendCmd, name: name, flags: dmSecureDataFlag, eventNr: udevPrimarySourceCookie}); err != nil {
		c.do(&dmRequest{cmd: dmTableClearCmd, name: name}) //nolint:errcheck // best effort; the caller removes the device
		return err
	}
	return nil
}

// udevPrimarySourceCookie is a device-mapper udev cookie (event_nr; the kernel passes it
// to udev as DM_COOKIE) that carries only DM_UDEV_PRIMARY_SOURCE_FLAG (0x0040) in its
// flag half and no semaphore in its low half: libdevmapper's
// libdm-common.h DM_UDEV_FLAGS_SHIFT is 16. udev's 55-dm.rules reads the flags with
// "dmsetup udevflags"; with no semaphore, "dmsetup udevcomplete" has nothing to wake.
const udevPrimarySourceCookie = 0x0040 << 16

func checkMappingName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) >= dmNameLen {
		return fmt.Errorf("blockdev: invalid mapping name %q", name)
	}
	return nil
}

// RemoveOptions tunes DMRemove.
type RemoveOptions struct {
	// Deferred asks the kernel to remove the mapping when its last user
	// closes it, instead of failing with ErrBusy.
	Deferred bool
	// Retries is how many more times a busy mapping is retried (udev or
	// blkid often hold a fresh device briefly); 0 means 5. Retries stop
	// when ctx is done.
	Retries int
	// RetryInterval is the pause between retries; 0 means 200 ms.
	RetryInterval time.Duration
	// DevDir is where DMCreate made the node, "/dev/mapper" by default.
	DevDir string
}

// DMRemove removes the mapping name. A busy mapping is retried (see
// RemoveOptions) and then fails with an error matching ErrBusy; a missing one
// fails with ErrMappingNotFound. A device node that DMCreate made itself
// is removed too.
func DMRemove(ctx context.Context, name string, opts RemoveOptions) error {
	if err := checkMappingName(name); err != nil {
		return err
	}
	c, err := openDMControl()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.remove(ctx, name, opts)
}

func (c *dmControl) remove(ctx context.Context, name string, opts RemoveOptions) error {
	retries, interval := opts.Retries, opts.RetryInterval
	if retries <= 0 {
		retries = 5
	}
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	var flags uint32
	if opts.Deferred {
		flags |= dmDeferredRemoveFlag
	}
	hdr, _, err := c.do(&dmRequest{cmd: dmDevStatusCmd, name: name})
	if err != nil {
		return err
	}
	dev := hdr.dev
	for attempt := 0; ; attempt++ {
		_, _, err = c.do(&dmRequest{cmd: dmDevRemoveCmd, name: name, flags: flags})
		if err == nil || !errors.Is(err, ErrBusy) || attempt >= retries {
			break
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
	if err != nil {
		return err
	}
	if !opts.Deferred {
		removeOwnNode(devDir(opts.DevDir), name, dev)
	}
	return nil
}

// DMStatus returns the state of the mapping name (no table).
func DMStatus(ctx context.Context, name string) (*Mapping, error) {
	if err := checkMappingName(name); err != nil {
		return nil, err
	}
	c, err := openDMControl()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	hdr, _, err := c.do(&dmRequest{cmd: dmDevStatusCmd, name: name})
	if err != nil {
		return nil, err
	}
	return mappingFromHeader(hdr), nil
}

// DMTable returns the mapping name with its live table, keys redacted.
func DMTable(ctx context.Context, name string) (*Mapping, error) {
	if err := checkMappingName(name); err != nil {
		return nil, err
	}
	c, err := openDMControl()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.table(name)
}

func (c *dmControl) table(name string) (*Mapping, error) {
	hdr, data, err := c.do(&dmRequest{cmd: dmTableStatusCmd, name: name, flags: dmStatusTableFlag | dmSecureDataFlag})
	defer clear(data)
	if err != nil {
		return nil, err
	}
	m := mappingFromHeader(hdr)
	if hdr.flags&dmActivePresentFlag == 0 {
		return m, nil
	}
	ts, err := decodeTargets(data, hdr.targetCount)
	if err != nil {
		return nil, fmt.Errorf("%w (mapping %s)", err, name)
	}
	for _, t := range ts {
		m.Targets = append(m.Targets, redactTarget(t))
	}
	return m, nil
}

// redactTarget copies a table line, replacing a crypt key by a placeholder.
func redactTarget(t dmTarget) Target {
	out := Target{Start: t.start, Length: t.length, Type: t.typ}
	if t.typ != "crypt" {
		out.Params = string(t.params)
		return out
	}
	f := bytes.Fields(t.params)
	if len(f) < 2 {
		out.Params = redactedKey
		return out
	}
	var b strings.Builder
	for i, w := range f {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i == 1 {
			b.WriteString(redactedKey)
			continue
		}
		b.Write(w)
	}
	out.Params = b.String()
	if ct, err := ParseCryptParams(out.Params); err == nil {
		ct.Start, ct.Length = t.start, t.length
		out.Crypt = ct
	}
	return out
}

func mappingFromHeader(h *dmHeader) *Mapping {
	return &Mapping{
		Name:      h.name,
		UUID:      h.uuid,
		Dev:       h.dev,
		OpenCount: int(h.openCount),
		ReadOnly:  h.flags&dmReadonlyFlag != 0,
		Suspended: h.flags&dmSuspendFlag != 0,
	}
}

// DMList returns every dm-crypt mapping with its table (keys redacted).
// Mappings of other target types are left out.
func DMList(ctx context.Context) ([]*Mapping, error) {
	c, err := openDMControl()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.list(ctx)
}

func (c *dmControl) list(ctx context.Context) ([]*Mapping, error) {
	_, data, err := c.do(&dmRequest{cmd: dmListDevicesCmd})
	if err != nil {
		return nil, err
	}
	names := parseNameList(data)
	var out []*Mapping
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, err := c.table(n)
		if errors.Is(err, ErrMappingNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		if m.IsCrypt() {
			out = append(out, m)
		}
	}
	return out, nil
}

// parseNameList decodes struct dm_name_list entries: u64 dev, u32 next (offset
// of the next entry from this one, 0 for the last), then the NUL-terminated
// name.
func parseNameList(data []byte) []string {
	bo := byteOrder()
	var names []string
	off := 0
	for off+12 <= len(data) {
		e := data[off:]
		dev := bo.Uint64(e[0:])
		next := int(bo.Uint32(e[8:]))
		name := cstring(e[12:])
		if dev == 0 && name == "" {
			break // empty list
		}
		names = append(names, name)
		if next <= 0 {
			break
		}
		off += next
	}
	return names
}

// DMVersion returns the kernel's device-mapper ioctl interface version.
func DMVersion() (major, minor, patch uint32, err error) {
	c, err := openDMControl()
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	hdr, _, err := c.do(&dmRequest{cmd: dmVersionCmd})
	if err != nil {
		return 0, 0, 0, err
	}
	return hdr.version[0], hdr.version[1], hdr.version[2], nil
}

// cstring returns b up to its first NUL, with trailing spaces trimmed.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}
