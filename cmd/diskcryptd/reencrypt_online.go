package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/reencrypt"
)

// openForReencrypt opens dev for a re-encryption: exclusively when nothing
// uses it (offline), or, when it is busy because a LUKS2 mapping of this
// volume is active (cryptsetup's dm UUID CRYPT-LUKS2-<uuid>-NAME over this
// device), shared, with the mapping to re-encrypt online. Any other user
// (a mounted partition, another mapping) is refused.
func openForReencrypt(ctx context.Context, dev string) (*os.File, int64, *reencrypt.Online, error) {
	fh, size, err := openExclusive(dev)
	if err == nil || !errors.Is(err, unix.EBUSY) {
		return fh, size, nil, err
	}
	name, ferr := findLUKS2Mapping(ctx, dev)
	if ferr != nil {
		return nil, 0, nil, errors.Join(err, ferr)
	}
	fh, err = os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, nil, err
	}
	if size, err = fh.Seek(0, io.SeekEnd); err != nil {
		fh.Close()
		return nil, 0, nil, err
	}
	return fh, size, &reencrypt.Online{Name: name, Backing: fh}, nil
}

// findLUKS2Mapping returns the name of the active LUKS2 mapping of the volume
// on dev, checked by dm UUID and by the backing device number.
func findLUKS2Mapping(ctx context.Context, dev string) (string, error) {
	v, err := luks2.OpenFile(dev, luks2.ReadOnly)
	if err != nil {
		return "", err
	}
	uuid := v.Metadata().UUID
	v.Close()
	prefix, err := blockdev.DMUUID(uuid, "x")
	if err != nil {
		return "", err
	}
	prefix = strings.TrimSuffix(prefix, "x")
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		return "", err
	}
	devnum := blockdev.DevNumString(uint64(st.Rdev))
	ms, err := blockdev.DMList(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if !strings.HasPrefix(m.UUID, prefix) {
			continue
		}
		t, err := blockdev.DMTable(ctx, m.Name)
		if err != nil {
			return "", err
		}
		if len(t.Targets) == 0 || t.Targets[0].Crypt == nil || t.Targets[0].Crypt.Device != devnum {
			return "", fmt.Errorf("mapping %s of volume %s does not sit on %s (%s)", m.Name, uuid, dev, devnum)
		}
		return m.Name, nil
	}
	return "", fmt.Errorf("%s is in use, but by no LUKS2 mapping of volume %s: re-encryption is offline or online over its own mapping only", dev, uuid)
}
