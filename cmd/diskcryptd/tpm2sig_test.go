package main

import (
	"os"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
	"github.com/diskcryptd/diskcryptd/tpm/tpmtest"
)

// TestTPM2SignedPolicyCLI: enroll tpm2 --tpm2-public-key seals to PCR 11 values the
// key signs; unlock --tpm2-signature with systemd-measure's signature of the booted
// UKI recovers the key, one for another UKI is refused with exit 2 and a hint, no
// signature at all likewise; a volume systemd-cryptenroll sealed the same way
// unlocks too.
func TestTPM2SignedPolicyCLI(t *testing.T) {
	testpeer.Require(t, "cryptsetup", "systemd-cryptenroll", tpmtest.SystemdMeasure)
	spec := tpmtest.StartSwtpm(t)
	dir := t.TempDir()
	sb := tpmtest.BootSigned(t, spec, dir)
	pub, good, bad := sb.PublicKey, sb.Signature, sb.OtherSignature

	img := newImage(t, dir, 40)
	key := writeSecret(t, dir, "key", "pw")
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img)...)
	mustCLI(t, "", nil, "enroll", "tpm2", "--key-file", key, "--tpm2-device", spec,
		"--tpm2-public-key", pub, "--tpm2-public-key-pcrs", "11", "--tpm2-pcrs", "", img)
	tok := peer(t, nil, "cryptsetup", "token", "export", "--token-id", "0", img)
	if !strings.Contains(tok, `"tpm2_pubkey_pcrs":[11]`) || !strings.Contains(tok, `"tpm2-pcrs":[]`) {
		t.Fatalf("token is not a systemd signed-policy token: %s", tok)
	}

	if r := mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, "--tpm2-signature", good, img); !strings.Contains(r.stdout, "systemd-tpm2") {
		t.Fatalf("unlock --test with the booted UKI's signature: %+v", r)
	}
	r := cli(t, "", nil, "unlock", "--test", "--tpm2-device", spec, "--tpm2-signature", bad, img)
	t.Logf("another UKI's signature: exit %d\n%s", r.code, r.stderr)
	if r.code != exitPermission || !strings.Contains(r.stderr, "other PCR values") || !strings.Contains(r.stderr, "systemd-measure sign") {
		t.Fatalf("another UKI's signature: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat("/run/systemd/tpm2-pcr-signature.json"); os.IsNotExist(err) {
		r = cli(t, "", nil, "unlock", "--test", "--tpm2-device", spec, img)
		if r.code != exitPermission || !strings.Contains(r.stderr, "--tpm2-signature") {
			t.Fatalf("no signature: exit %d\n%s", r.code, r.stderr)
		}
	}

	// systemd's enrolment of the same kind unlocks here.
	img2 := newImage(t, t.TempDir(), 40)
	mustCLI(t, "", nil, append(append([]string{"format", "--key-file", key}, fastKDF...), img2)...)
	peer(t, nil, "systemd-cryptenroll", "--unlock-key-file="+key, "--tpm2-device="+spec,
		"--tpm2-public-key="+pub, "--tpm2-public-key-pcrs=11", "--tpm2-pcrs=7", img2)
	mustCLI(t, "", nil, "unlock", "--test", "--tpm2-device", spec, "--tpm2-signature", good, img2)
}
