package main

import (
	"context"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
)

// tpmFlags are the TPM2 flags, named as systemd-cryptenroll names them.
type tpmFlags struct {
	device  string
	pcrs    string
	bank    string
	withPIN bool
	pinFile string
	sig     tpmSigFlags
}

func (t *tpmFlags) register(f *flagSet, enroll bool) {
	f.StringVar(&t.device, "tpm2-device", "", "TPM: /dev/tpmrm0 (default) or swtpm:path=SOCKET")
	f.StringVar(&t.pinFile, "tpm2-pin-file", "", "file holding the TPM2 PIN (default: $PIN, or $NEWPIN when enrolling, as systemd)")
	if enroll {
		f.StringVar(&t.pcrs, "tpm2-pcrs", "7", "PCRs to bind to, e.g. 0+7 or sha256:7+11")
		f.StringVar(&t.bank, "tpm2-pcr-bank", "", "PCR bank (default sha256)")
		f.BoolVar(&t.withPIN, "tpm2-with-pin", false, "also require a PIN to unseal")
	}
	t.sig.register(f, enroll)
}

// pinSource returns a PIN callback that reads --tpm2-pin-file, or the environment
// variable systemd uses (NEWPIN when enrolling, PIN when unlocking). The PIN never
// comes from argv.
func (t *tpmFlags) pinSource(e *env, envVar string) tpm.PINFunc {
	return func(ctx context.Context, prompt string) ([]byte, error) {
		if t.pinFile != "" {
			f, err := openSecretFile(e, t.pinFile)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			b, err := readSecret(f, luks2.MaxKeyFileSize)
			if err != nil {
				return nil, err
			}
			return trimNewline(b), nil
		}
		if v := e.getenv(envVar); v != "" {
			return []byte(v), nil
		}
		return nil, tpm.ErrPINRequired
	}
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b[len(b)-1] = 0
		b = b[:len(b)-1]
	}
	return b
}

// protector builds the TPM2 protector for enrolment (enroll=true) or unlock.
func (t *tpmFlags) protector(e *env, enroll bool) (*tpm.Protector, error) {
	cfg := tpm.Config{Device: t.device, Logger: e.log}
	if enroll {
		pcrs, bank, err := tpm.ParsePCRs(t.pcrs)
		if err != nil {
			return nil, withCode(exitUsage, "", err)
		}
		if bank == "" {
			bank = t.bank
		}
		cfg.PCRs, cfg.Bank, cfg.EnrollWithPIN = pcrs, bank, t.withPIN
		if cfg.PCRs == nil {
			cfg.PCRs = []int{}
		}
		cfg.PIN = t.pinSource(e, "NEWPIN")
	} else {
		cfg.PIN = t.pinSource(e, "PIN")
	}
	if err := t.sig.apply(&cfg, enroll); err != nil {
		return nil, err
	}
	return tpm.NewProtector(cfg)
}
