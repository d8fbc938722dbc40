package tpm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// ResourceManaged is implemented by the transports Open returns. It reports whether
// a resource manager stands between this process and the TPM (/dev/tpmrm0), so
// handles another process left behind are invisible to it; a raw TPM (/dev/tpm0, a
// swtpm socket) shows and keeps every process's handles.
type ResourceManaged interface {
	ResourceManaged() bool
}

// ResourceManaged implements the ResourceManaged interface.
func (s *streamTPM) ResourceManaged() bool { return s.rm }

// isResourceManagerDevice reports whether path is a kernel resource manager
// (/dev/tpmrmN).
func isResourceManagerDevice(path string) bool {
	return strings.HasPrefix(filepath.Base(path), "tpmrm")
}

// withoutResourceManager reports whether t is known to reach the TPM without a
// resource manager. Transports that do not say are assumed to have one.
func withoutResourceManager(t transport.TPM) bool {
	rm, ok := t.(ResourceManaged)
	return ok && !rm.ResourceManaged()
}

// memoryFull reports whether err is TPM_RC_SESSION_MEMORY or TPM_RC_OBJECT_MEMORY
// (Part 2, 6.6.3): the TPM has no free slot for a session or an object.
func memoryFull(err error) bool {
	return errors.Is(err, tpm2.TPMRCSessionMemory) || errors.Is(err, tpm2.TPMRCObjectMemory)
}

// FlushStale flushes every loaded transient object, HMAC session and policy session
// on t (TPM2_GetCapability(TPM_CAP_HANDLES), then TPM2_FlushContext, Part 3, 30.2 and
// 28.4) and returns how many it flushed. It is meant for a TPM reached without a
// resource manager on which another process left handles loaded; on a TPM that other
// processes are using at the same moment it pulls their handles away, so callers use
// it only after TPM_RC_SESSION_MEMORY or TPM_RC_OBJECT_MEMORY, and retry once.
func FlushStale(ctx context.Context, t transport.TPM) (int, error) {
	tc := withContext(ctx, t)
	n := 0
	for _, ht := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		first := uint32(ht) << 24
		for {
			rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: first, PropertyCount: 64}.Execute(tc)
			if err != nil {
				return n, fmt.Errorf("tpm: list loaded handles: %w", err)
			}
			hl, err := rsp.CapabilityData.Data.Handles()
			if err != nil {
				return n, fmt.Errorf("tpm: list loaded handles: %w", err)
			}
			var last uint32
			for _, h := range hl.Handle {
				if uint32(h)>>24 != uint32(ht) {
					continue
				}
				last = uint32(h)
				if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tc); err != nil {
					return n, fmt.Errorf("tpm: flush handle 0x%08x: %w", uint32(h), err)
				}
				n++
			}
			if !rsp.MoreData || last == 0 {
				break
			}
			first = last + 1
		}
	}
	return n, nil
}

// WithStaleRetry runs fn, which uses t. When fn fails with TPM_RC_SESSION_MEMORY or
// TPM_RC_OBJECT_MEMORY and t reaches the TPM without a resource manager, the handles
// another process left loaded are flushed (FlushStale) and fn runs once more. It
// returns how many handles it flushed.
func WithStaleRetry(ctx context.Context, t transport.TPM, fn func() error) (int, error) {
	err := fn()
	if err == nil || !memoryFull(err) || !withoutResourceManager(t) {
		return 0, err
	}
	n, ferr := FlushStale(ctx, t)
	if ferr != nil {
		return n, errors.Join(err, ferr)
	}
	return n, fn()
}
