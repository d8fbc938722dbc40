package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/diskcryptd/diskcryptd/kms/tpmkey"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/google/go-tpm/tpm2/transport"
)

// cmdKMSCSR is "kms csr": a KMIP client key made inside the TPM (never exportable; its
// blob, useless on another TPM, goes to --key-out) and a CSR for it that the operator
// has the KMS's client CA sign. The key is then used as --kmip-key tpm2:FILE (or
// "kmip-key tpm2:/PATH" in the daemon's configuration).
func cmdKMSCSR(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "kms csr", "--tpm2-device DEV --subject CN=HOST[,O=ORG,OU=UNIT] --out FILE.csr [--key-out FILE]")
	device := f.String("tpm2-device", "", "TPM: /dev/tpmrm0 (default) or swtpm:path=SOCKET")
	subject := f.String("subject", "", "certificate subject, e.g. CN=host42.dc1")
	out := f.String("out", "", "where to write the CSR (PEM)")
	keyOut := f.String("key-out", "", "where to write the TPM key blob (default: --out with .tpm2key instead of .csr)")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	if *out == "" || *subject == "" {
		return usageErrorf("kms csr needs --subject CN=HOST and --out FILE.csr")
	}
	name, err := parseSubject(*subject)
	if err != nil {
		return usageErrorf("%v", err)
	}
	if *keyOut == "" {
		*keyOut = strings.TrimSuffix(*out, ".csr") + ".tpm2key"
	}
	// A new file only, created 0600 before any TPM work: an existing blob may be the
	// key this host's certificate is for, and an existing file keeps its mode.
	kf, err := os.OpenFile(*keyOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return withCode(exitUsage, "remove it first, or pass another --key-out", fmt.Errorf("kms csr: key blob file: %w", err))
	}
	written := false
	defer func() {
		kf.Close()
		if !written {
			os.Remove(*keyOut)
		}
	}()
	t, err := tpm.OpenContext(ctx, *device)
	if err != nil {
		return err
	}
	blob, err := tpmkey.Create(ctx, t)
	t.Close()
	if err != nil {
		return err
	}
	signer, err := tpmkey.NewSigner(blob, func(ctx context.Context) (transport.TPMCloser, error) { return tpm.OpenContext(ctx, *device) })
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: name}, signer)
	if err != nil {
		return fmt.Errorf("kms csr: %w", err)
	}
	if _, err := kf.Write(tpmkey.EncodePEM(blob)); err != nil {
		return fmt.Errorf("kms csr: %w", err)
	}
	if err := kf.Sync(); err != nil {
		return fmt.Errorf("kms csr: %w", err)
	}
	written = true
	if err := os.WriteFile(*out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "TPM-held key in %s (it opens on this TPM only); CSR for %s in %s\n", *keyOut, name, *out)
	fmt.Fprintf(e.stdout, "have the KMS's client CA sign it, then use --kmip-cert CERT --kmip-key tpm2:%s\n", *keyOut)
	return nil
}

// parseSubject reads "CN=host,O=org,OU=unit" (the attributes a client certificate
// needs; no escaping).
func parseSubject(s string) (pkix.Name, error) {
	var n pkix.Name
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || v == "" {
			return n, fmt.Errorf("subject %q: want CN=HOST[,O=ORG,OU=UNIT]", s)
		}
		switch strings.ToUpper(k) {
		case "CN":
			n.CommonName = v
		case "O":
			n.Organization = append(n.Organization, v)
		case "OU":
			n.OrganizationalUnit = append(n.OrganizationalUnit, v)
		default:
			return n, fmt.Errorf("subject %q: attribute %q (CN, O, OU)", s, k)
		}
	}
	if n.CommonName == "" {
		return n, fmt.Errorf("subject %q has no CN", s)
	}
	return n, nil
}
