package luks2

import (
	"fmt"
	"sort"
	"strings"
)

// allowedDataCiphers are the data segment encryptions (dm-crypt cipher specs) that
// Unlock, UnlockKeyslot and CryptTarget accept, with the volume key sizes in bytes
// each takes. They are what `cryptsetup luksFormat` writes by default
// (aes-xts-plain64) and the serpent and twofish variants of cryptsetup's own
// benchmark list in XTS and CBC-ESSIV modes: ciphers that are strong, with a
// per-sector IV that never repeats on a LUKS2 volume. Never listed: cipher_null,
// ECB, and any mode without an IV ("-null", "-ecb") or with a 32-bit one ("-plain"),
// under which equal plaintext sectors give equal ciphertext and sectors can be moved
// around unnoticed.
var allowedDataCiphers = func() map[string][]int {
	m := map[string][]int{}
	for _, c := range []string{"aes", "serpent", "twofish"} {
		m[c+"-xts-plain64"] = []int{32, 64}
		m[c+"-cbc-essiv:sha256"] = []int{16, 24, 32}
	}
	return m
}()

// allowedKeyslotCiphers are the keyslot area encryptions we decrypt ourselves
// (package xts): cryptsetup's default, aes-xts-plain64, with 256- or 512-bit keys.
var allowedKeyslotCiphers = map[string][]int{keyslotCipher: {32, 64}}

// checkCipher returns nil when enc with a keySize-byte key is in allowed.
func checkCipher(allowed map[string][]int, what, enc string, keySize int) error {
	sizes, ok := allowed[enc]
	if !ok {
		return fmt.Errorf("%w: %s encryption %q is not one of %s", ErrUnsupportedCipher, what, enc, cipherNames(allowed))
	}
	for _, s := range sizes {
		if s == keySize {
			return nil
		}
	}
	return fmt.Errorf("%w: %s encryption %q with a %d-bit key", ErrUnsupportedCipher, what, enc, keySize*8)
}

func cipherNames(allowed map[string][]int) string {
	names := make([]string, 0, len(allowed))
	for n := range allowed {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// checkDataCiphers checks every crypt segment's encryption and the size of the key
// its digest's keyslots hold against allowedDataCiphers.
func (m *metadata) checkDataCiphers() error {
	for _, sid := range sortedIDs(m.segments) {
		s := m.segments[sid]
		if s.sg.Type != "crypt" {
			continue
		}
		keySize := 0
		for _, did := range sortedIDs(m.digests) {
			d := m.digests[did]
			for _, x := range d.segments {
				if x == sid {
					for _, k := range d.keyslots {
						keySize = m.keyslots[k].ks.KeySize
						break
					}
				}
			}
		}
		if keySize == 0 {
			// No keyslot holds the key: check the cipher name alone.
			if _, ok := allowedDataCiphers[s.sg.Encryption]; !ok {
				return checkCipher(allowedDataCiphers, fmt.Sprintf("segment %d", sid), s.sg.Encryption, 0)
			}
			continue
		}
		if err := checkCipher(allowedDataCiphers, fmt.Sprintf("segment %d", sid), s.sg.Encryption, keySize); err != nil {
			return err
		}
	}
	return nil
}
