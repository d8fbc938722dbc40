package blockdev

import (
	"io"

	"github.com/diskcryptd/diskcryptd/blockdev/probe"
)

// The signature probe lives in package probe (pure Go, no Linux imports, so that
// portable packages such as luks2 can use it); these names keep blockdev's API.

// Signature usage classes, as blkid names them (see package probe).
const (
	UsageCrypto     = probe.UsageCrypto
	UsageFilesystem = probe.UsageFilesystem
	UsageSwap       = probe.UsageSwap
	UsagePartTable  = probe.UsagePartTable
)

// Signature describes a known on-disk structure (probe.Signature).
type Signature = probe.Signature

// SignatureError reports a signature found where none was expected
// (probe.SignatureError).
type SignatureError = probe.SignatureError

// ErrSignature is matched by every *SignatureError (probe.ErrSignature).
var ErrSignature = probe.ErrSignature

// Probe looks for a known signature on the first size bytes of r (probe.Probe).
func Probe(r io.ReaderAt, size int64) (*Signature, error) { return probe.Probe(r, size) }

// ProbeAll returns every signature found (probe.ProbeAll).
func ProbeAll(r io.ReaderAt, size int64) ([]*Signature, error) { return probe.ProbeAll(r, size) }

// CheckEmpty returns nil when Probe finds nothing (probe.CheckEmpty).
func CheckEmpty(r io.ReaderAt, size int64) error { return probe.CheckEmpty(r, size) }
