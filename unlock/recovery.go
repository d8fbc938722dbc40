package unlock

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
)

// RecoveryTokenType is the LUKS2 token type systemd-cryptenroll writes for a recovery
// key; the token carries no secret, only the keyslot binding.
const RecoveryTokenType = "systemd-recovery"

// modhex is the alphabet of YubiKey "modhex", which systemd uses for recovery keys
// because it types the same on most keyboard layouts.
const modhex = "cbdefghijklnrtuv"

// recoveryKeyBytes is the entropy of a recovery key: 256 bits, as systemd.
const recoveryKeyBytes = 32

// ErrRecoveryKeyFormat is returned by ParseRecoveryKey for text that is not a recovery
// key in systemd's format.
var ErrRecoveryKeyFormat = errors.New("unlock: not a recovery key (expected 8 groups of 8 modhex characters cbdefghijklnrtuv, separated by dashes)")

// NewRecoveryKey returns a fresh recovery key enrolment in systemd's format: 32 random
// bytes as 64 modhex characters in 8 dash-separated groups. The keyslot passphrase is
// that text itself, so cryptsetup and systemd-cryptsetup accept it as a passphrase.
func NewRecoveryKey() (*Enrollment, error) {
	var raw [recoveryKeyBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("unlock: generating recovery key: %w", err)
	}
	defer clear(raw[:])
	text := make([]byte, 0, recoveryKeyBytes*2+7)
	for i, b := range raw {
		if i > 0 && i%4 == 0 {
			text = append(text, '-')
		}
		text = append(text, modhex[b>>4], modhex[b&0xf])
	}
	return &Enrollment{
		Passphrase: text,
		Token:      map[string]any{"type": RecoveryTokenType},
	}, nil
}

// ParseRecoveryKey normalises what a human typed (surrounding whitespace, upper case,
// missing dashes) into the canonical recovery key text that is the keyslot passphrase.
// The caller wipes both slices.
func ParseRecoveryKey(typed []byte) ([]byte, error) {
	digits := make([]byte, 0, recoveryKeyBytes*2)
	for _, c := range []byte(strings.TrimSpace(string(typed))) {
		switch {
		case c == '-' || c == ' ':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		if strings.IndexByte(modhex, c) < 0 {
			clear(digits)
			return nil, ErrRecoveryKeyFormat
		}
		digits = append(digits, c)
	}
	if len(digits) != recoveryKeyBytes*2 {
		clear(digits)
		return nil, ErrRecoveryKeyFormat
	}
	out := make([]byte, 0, len(digits)+7)
	for i, c := range digits {
		if i > 0 && i%8 == 0 {
			out = append(out, '-')
		}
		out = append(out, c)
	}
	clear(digits)
	return out, nil
}
