// Command pcrextend extends one SHA-256 PCR bank of the guest's TPM with the digest of a
// string. The vmtests harness builds it statically and puts it in the initramfs, so a
// scenario can change the measured state of a boot (busybox cannot talk to a TPM).
//
//	pcrextend [-device /dev/tpmrm0] [-pcr 7] [-data tampered]
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

func main() {
	device := flag.String("device", "/dev/tpmrm0", "TPM character device")
	pcr := flag.Uint("pcr", 7, "PCR index to extend")
	data := flag.String("data", "diskcryptd-vmtests-tamper", "event data whose SHA-256 is extended")
	flag.Parse()
	if err := extend(*device, *pcr, []byte(*data)); err != nil {
		fmt.Fprintln(os.Stderr, "pcrextend:", err)
		os.Exit(1)
	}
}

func extend(device string, pcr uint, data []byte) error {
	if pcr > 23 {
		return fmt.Errorf("PCR %d out of range", pcr)
	}
	t, err := linuxtpm.Open(device)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	defer t.Close()
	digest := sha256.Sum256(data)
	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:]},
		}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("extend PCR %d: %w", pcr, err)
	}
	return nil
}
