package tpm

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// MaxPCR is the highest PCR index of a PC Client TPM.
const MaxPCR = 23

// VolumePCR is the PCR systemd measures volume keys into ("system identity").
const VolumePCR = 15

var pcrNames = map[string]int{
	"platform-code": 0, "platform-config": 1, "external-code": 2, "external-config": 3,
	"boot-loader-code": 4, "boot-loader-config": 5, "host-platform": 6,
	"secure-boot-policy": 7, "kernel-initrd": 9, "ima": 10, "kernel-boot": 11,
	"kernel-config": 12, "sysexts": 13, "shim-policy": 14, "system-identity": 15,
	"debug": 16, "application-support": 23,
}

var banks = map[string]tpm2.TPMIAlgHash{
	"sha1": tpm2.TPMAlgSHA1, "sha256": tpm2.TPMAlgSHA256,
	"sha384": tpm2.TPMAlgSHA384, "sha512": tpm2.TPMAlgSHA512,
}

// ParseBank parses a PCR bank name ("sha256", "sha1", "sha384", "sha512"); "" is
// sha256.
func ParseBank(s string) (tpm2.TPMIAlgHash, error) {
	if s == "" {
		return tpm2.TPMAlgSHA256, nil
	}
	if b, ok := banks[strings.ToLower(s)]; ok {
		return b, nil
	}
	return 0, fmt.Errorf("tpm: unknown PCR bank %q", s)
}

// BankName names a PCR bank as systemd's tokens do ("sha256").
func BankName(b tpm2.TPMIAlgHash) string {
	for n, v := range banks {
		if v == b {
			return n
		}
	}
	return fmt.Sprintf("alg-0x%x", uint16(b))
}

func bankHash(b tpm2.TPMIAlgHash) (func() hash.Hash, error) {
	switch b {
	case tpm2.TPMAlgSHA1:
		return sha1.New, nil
	case tpm2.TPMAlgSHA256:
		return sha256.New, nil
	case tpm2.TPMAlgSHA384:
		return sha512.New384, nil
	case tpm2.TPMAlgSHA512:
		return sha512.New, nil
	}
	return nil, fmt.Errorf("tpm: unsupported PCR bank 0x%x", uint16(b))
}

// ParsePCRs parses a PCR list as systemd's --tpm2-pcrs does: indexes or names
// ("secure-boot-policy") separated by "+" or ",", optionally led by a bank ("sha256:7")
// or with a bank per entry ("7:sha256"); every bank named must agree. "" is no PCRs.
// It returns the sorted, de-duplicated indexes and the bank ("" if none was named).
func ParsePCRs(s string) ([]int, string, error) {
	bank := ""
	setBank := func(b string) error {
		if _, err := ParseBank(b); err != nil {
			return err
		}
		if bank != "" && bank != b {
			return fmt.Errorf("tpm: PCR list %q names two banks", s)
		}
		bank = b
		return nil
	}
	rest := s
	if b, r, ok := strings.Cut(s, ":"); ok {
		if _, err := ParseBank(b); err == nil {
			bank, rest = strings.ToLower(b), r
		}
	}
	var pcrs []int
	if strings.TrimSpace(rest) == "" {
		return nil, bank, nil
	}
	for _, item := range strings.FieldsFunc(rest, func(r rune) bool { return r == '+' || r == ',' }) {
		item = strings.TrimSpace(item)
		if idx, b, ok := strings.Cut(item, ":"); ok {
			if strings.Contains(b, "=") {
				return nil, "", fmt.Errorf("tpm: PCR %q: explicit PCR values are not supported", item)
			}
			if err := setBank(strings.ToLower(b)); err != nil {
				return nil, "", err
			}
			item = idx
		}
		n, err := strconv.Atoi(item)
		if err != nil {
			v, ok := pcrNames[strings.ToLower(item)]
			if !ok {
				return nil, "", fmt.Errorf("tpm: %q is not a PCR index or name", item)
			}
			n = v
		}
		if n < 0 || n > MaxPCR {
			return nil, "", fmt.Errorf("tpm: PCR %d out of range 0..%d", n, MaxPCR)
		}
		pcrs = append(pcrs, n)
	}
	slices.Sort(pcrs)
	return slices.Compact(pcrs), bank, nil
}

// FormatPCRs formats PCR indexes as systemd prints them ("7+11").
func FormatPCRs(pcrs []int) string {
	s := make([]string, len(pcrs))
	for i, p := range pcrs {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, "+")
}

func pcrSelection(bank tpm2.TPMIAlgHash, pcrs []int) (tpm2.TPMLPCRSelection, error) {
	u := make([]uint, 0, len(pcrs))
	for _, p := range pcrs {
		if p < 0 || p > MaxPCR {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("tpm: PCR %d out of range", p)
		}
		u = append(u, uint(p))
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: bank, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}, nil
}

// ReadPCRs reads the given PCRs of bank and returns their values by index.
func ReadPCRs(ctx context.Context, t transport.TPM, bank tpm2.TPMIAlgHash, pcrs []int) (map[int][]byte, error) {
	out := make(map[int][]byte, len(pcrs))
	tc := withContext(ctx, t)
	// A TPM returns at most 8 digests per PCR_Read; ask one at a time.
	for _, p := range pcrs {
		sel, err := pcrSelection(bank, []int{p})
		if err != nil {
			return nil, err
		}
		rsp, err := (tpm2.PCRRead{PCRSelectionIn: sel}).Execute(tc)
		if err != nil {
			return nil, fmt.Errorf("tpm: read PCR %d: %w", p, err)
		}
		if len(rsp.PCRValues.Digests) != 1 {
			return nil, fmt.Errorf("tpm: PCR %d of bank %s is not allocated", p, BankName(bank))
		}
		out[p] = rsp.PCRValues.Digests[0].Buffer
	}
	return out, nil
}

// ExtendDigests extends pcr with one precomputed digest per bank.
func ExtendDigests(ctx context.Context, t transport.TPM, pcr int, digests map[tpm2.TPMIAlgHash][]byte) error {
	if pcr < 0 || pcr > MaxPCR {
		return fmt.Errorf("tpm: PCR %d out of range", pcr)
	}
	var vals tpm2.TPMLDigestValues
	for b, d := range digests {
		vals.Digests = append(vals.Digests, tpm2.TPMTHA{HashAlg: b, Digest: d})
	}
	slices.SortFunc(vals.Digests, func(a, b tpm2.TPMTHA) int { return int(a.HashAlg) - int(b.HashAlg) })
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   vals,
	}.Execute(withContext(ctx, t))
	if err != nil {
		return fmt.Errorf("tpm: extend PCR %d: %w", pcr, err)
	}
	return nil
}

// Extend measures data into pcr: each bank in banks (sha256 if none) is extended
// with the bank's hash of data.
func Extend(ctx context.Context, t transport.TPM, pcr int, banks []tpm2.TPMIAlgHash, data []byte) error {
	return extendEach(ctx, t, pcr, banks, func(h func() hash.Hash) []byte {
		d := h()
		d.Write(data)
		return d.Sum(nil)
	})
}

// VolumeMeasurement is the text systemd-cryptsetup's tpm2-measure-pcr= measures for
// a volume: "cryptsetup:" + volume name + ":" + LUKS UUID (systemd's "TPM2 PCR
// Measurements" document, PCR 15 "Volume Key").
func VolumeMeasurement(name, uuid string) string {
	return "cryptsetup:" + name + ":" + uuid
}

// MeasureVolume extends pcr (normally VolumePCR) as systemd-cryptsetup's
// tpm2-measure-pcr=yes does after opening a volume: each bank is extended with
// HMAC-bank(volumeKey, VolumeMeasurement(name, uuid)), so the measurement binds
// the volume key without revealing it.
func MeasureVolume(ctx context.Context, t transport.TPM, pcr int, banks []tpm2.TPMIAlgHash, name, uuid string, volumeKey []byte) error {
	msg := []byte(VolumeMeasurement(name, uuid))
	return extendEach(ctx, t, pcr, banks, func(h func() hash.Hash) []byte {
		m := hmac.New(h, volumeKey)
		m.Write(msg)
		return m.Sum(nil)
	})
}

func extendEach(ctx context.Context, t transport.TPM, pcr int, bs []tpm2.TPMIAlgHash, f func(func() hash.Hash) []byte) error {
	if len(bs) == 0 {
		bs = []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA256}
	}
	digests := make(map[tpm2.TPMIAlgHash][]byte, len(bs))
	for _, b := range bs {
		h, err := bankHash(b)
		if err != nil {
			return err
		}
		digests[b] = f(h)
	}
	if len(digests) == 0 {
		return errors.New("tpm: no PCR bank to extend")
	}
	return ExtendDigests(ctx, t, pcr, digests)
}
