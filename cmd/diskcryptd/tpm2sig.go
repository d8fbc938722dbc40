package main

import (
	"fmt"
	"os"

	"github.com/diskcryptd/diskcryptd/tpm"
)

// tpmSigFlags are the flags of signed PCR policies, named as systemd-cryptenroll and
// crypttab name them: --tpm2-public-key, --tpm2-public-key-pcrs when enrolling,
// --tpm2-signature when unlocking.
type tpmSigFlags struct {
	publicKey     string
	publicKeyPCRs string
	signature     string
}

func (s *tpmSigFlags) register(f *flagSet, enroll bool) {
	if enroll {
		f.StringVar(&s.publicKey, "tpm2-public-key", "", "PEM RSA public key whose signed PCR values unlock (signed policy, as systemd-measure signs)")
		f.StringVar(&s.publicKeyPCRs, "tpm2-public-key-pcrs", "11", "with --tpm2-public-key: the PCRs whose values are signed")
		return
	}
	f.StringVar(&s.signature, "tpm2-signature", "", "PCR signature JSON for signed policies (default "+tpm.DefaultSignaturePath+" when present)")
}

// apply puts the flags into cfg.
func (s *tpmSigFlags) apply(cfg *tpm.Config, enroll bool) error {
	if !enroll {
		cfg.Signature = s.signature
		return nil
	}
	if s.publicKey == "" {
		return nil
	}
	pemBytes, err := os.ReadFile(s.publicKey)
	if err != nil {
		return withCode(exitUsage, "", fmt.Errorf("--tpm2-public-key: %w", err))
	}
	pcrs, bank, err := tpm.ParsePCRs(s.publicKeyPCRs)
	if err != nil {
		return withCode(exitUsage, "", fmt.Errorf("--tpm2-public-key-pcrs: %w", err))
	}
	if bank != "" && cfg.Bank != "" && bank != cfg.Bank {
		return usageErrorf("--tpm2-public-key-pcrs names bank %s, the policy uses %s", bank, cfg.Bank)
	}
	if len(pcrs) == 0 {
		return usageErrorf("--tpm2-public-key-pcrs: a signed policy needs at least one PCR (e.g. 11)")
	}
	cfg.PublicKey, cfg.PublicKeyPCRs = pemBytes, pcrs
	return nil
}
