package luks2

import (
	"crypto/subtle"
	"errors"
	"runtime"
)

// VolumeKey is a LUKS2 volume key (the data encryption key). It never prints, logs or
// marshals its bytes: String and GoString redact, MarshalJSON and MarshalText fail.
// The owner calls Wipe when done. A nil *VolumeKey is empty.
type VolumeKey struct {
	b []byte
}

// NewVolumeKey copies b into a new VolumeKey. The caller keeps ownership of b (and
// should wipe it).
func NewVolumeKey(b []byte) *VolumeKey {
	return &VolumeKey{b: append([]byte(nil), b...)}
}

// Bytes returns the key bytes, not a copy: they are valid until Wipe. Do not retain or
// log them.
func (k *VolumeKey) Bytes() []byte {
	if k == nil {
		return nil
	}
	return k.b
}

// Len returns the key length in bytes.
func (k *VolumeKey) Len() int {
	if k == nil {
		return 0
	}
	return len(k.b)
}

// Equal reports in constant time whether two keys are equal.
func (k *VolumeKey) Equal(o *VolumeKey) bool {
	return subtle.ConstantTimeCompare(k.Bytes(), o.Bytes()) == 1
}

// Wipe zeroes the key. The VolumeKey is empty afterwards.
func (k *VolumeKey) Wipe() {
	if k == nil {
		return
	}
	wipe(k.b)
	k.b = nil
}

// String returns a redacted description.
func (k *VolumeKey) String() string { return "luks2.VolumeKey(REDACTED)" }

// GoString returns a redacted description, for %#v.
func (k *VolumeKey) GoString() string { return "luks2.VolumeKey(REDACTED)" }

var errMarshalSecret = errors.New("luks2: refusing to marshal a volume key")

// MarshalJSON always fails: volume keys must not be serialized.
func (k *VolumeKey) MarshalJSON() ([]byte, error) { return nil, errMarshalSecret }

// MarshalText always fails: volume keys must not be serialized.
func (k *VolumeKey) MarshalText() ([]byte, error) { return nil, errMarshalSecret }

// wipe zeroes b and keeps the compiler from eliding it.
func wipe(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}
