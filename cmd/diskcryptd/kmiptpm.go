package main

import (
	"context"
	"errors"
)

// cmdKMSCSR is "kms csr": a TPM-resident client key and a CSR for it.
func cmdKMSCSR(ctx context.Context, e *env, args []string) error {
	return withCode(exitUsage, "", errors.New("kms csr: TPM-resident KMIP client keys are not implemented yet; use --kmip-key FILE"))
}
