package clevis

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskcryptd/diskcryptd/tpm"
)

// TPMDevice serves tpm2 pins with package tpm: clevis's primary key (the tpm2-tools
// default ECC template, equal to systemd's), a sealed keyed-hash object under a
// PolicyPCR policy. Calls are serialized: a TPM is one resource.
type TPMDevice struct {
	// Device is the TPM in systemd's syntax ("" for /dev/tpmrm0, "swtpm:path=SOCK").
	Device string
	// Open, if set, opens the TPM instead of Device.
	Open func(ctx context.Context) (transport.TPMCloser, error)

	once sync.Once
	sem  chan struct{} // holds one token while a call uses the TPM
}

var _ TPM2 = (*TPMDevice)(nil)

func (d *TPMDevice) open(ctx context.Context) (transport.TPMCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.Open != nil {
		return d.Open(ctx)
	}
	return tpm.OpenContext(ctx, d.Device) // a raw /dev/tpm0 answers EBUSY while another process holds it
}

// Seal implements TPM2.
func (d *TPMDevice) Seal(ctx context.Context, secret []byte, pcrIDs, bank string) (*tpm.ClevisTPM2, error) {
	var pcrs []int
	if pcrIDs != "" {
		var err error
		if pcrs, _, err = tpm.ParsePCRs(strings.ReplaceAll(pcrIDs, ",", "+")); err != nil {
			return nil, err
		}
	}
	alg, err := tpm.ParseBank(bank)
	if err != nil {
		return nil, err
	}
	var s *tpm.Sealed
	err = d.withPrimary(ctx, tpm.PrimaryECC, func(t transport.TPM, parent *tpm.Key) (err error) {
		s, err = tpm.Seal(ctx, t, parent, secret, tpm.Policy{PCRs: pcrs, Bank: alg}, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	b64 := base64.RawURLEncoding.EncodeToString
	h := &tpm.ClevisTPM2{
		Hash:    "sha256",
		Key:     "ecc",
		JWKPub:  b64(tpm2.Marshal(s.Public)),
		JWKPriv: b64(tpm2.Marshal(s.Private)),
	}
	if len(pcrs) > 0 {
		h.PCRBank = tpm.BankName(alg)
		parts := make([]string, len(pcrs))
		for i, p := range pcrs {
			parts[i] = fmt.Sprint(p)
		}
		h.PCRIDs = strings.Join(parts, ",")
	}
	return h, nil
}

// Unseal implements TPM2.
func (d *TPMDevice) Unseal(ctx context.Context, h *tpm.ClevisTPM2) ([]byte, error) {
	if h == nil {
		return nil, errors.New("clevis: tpm2 pin without header")
	}
	ct := &tpm.ClevisToken{TPM2: *h}
	sealed, err := ct.Sealed()
	if err != nil {
		return nil, err
	}
	alg, err := ct.PrimaryAlg()
	if err != nil {
		return nil, err
	}
	var secret []byte
	err = d.withPrimary(ctx, alg, func(t transport.TPM, parent *tpm.Key) (err error) {
		secret, err = tpm.Unseal(ctx, t, parent, sealed, nil)
		return err
	})
	return secret, err
}

// withPrimary runs f with the TPM opened and clevis's primary key of alg loaded,
// holding the device for itself.
func (d *TPMDevice) withPrimary(ctx context.Context, alg tpm.PrimaryAlg, f func(transport.TPM, *tpm.Key) error) error {
	// Wait for the TPM as long as ctx allows: the shares of an sss pin, or several
	// volumes, may queue for it while another call holds it.
	d.once.Do(func() { d.sem = make(chan struct{}, 1) })
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("clevis: waiting for the TPM: %w", ctx.Err())
	}
	defer func() { <-d.sem }()
	t, err := d.open(ctx)
	if err != nil {
		return err
	}
	defer t.Close()
	// On a TPM without a resource manager (/dev/tpm0, a swtpm socket) another process
	// (systemd-cryptsetup) may have left its sessions and objects loaded: flush them
	// and retry once, as package tpm's protector does.
	_, err = tpm.WithStaleRetry(ctx, t, func() error {
		parent, err := tpm.CreatePrimary(ctx, t, alg)
		if err != nil {
			return err
		}
		defer parent.Close(t)
		return f(t, parent)
	})
	return err
}
