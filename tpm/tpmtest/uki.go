package tpmtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SystemdMeasure is Debian's systemd-measure, which signs PCR 11 policies.
const SystemdMeasure = "/lib/systemd/systemd-measure"

// SigningKey writes a fresh RSA-2048 key pair for signed PCR policies as PEM files in
// dir (the private key 0600) and returns their paths.
func SigningKey(t testing.TB, dir string) (priv, pub string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// UKI is the measured sections of a unified kernel image, in systemd-stub's order.
type UKI struct {
	dir                   string
	Linux, OSRel, Cmdline string
}

// NewUKI writes the sections of a UKI whose kernel is named kernel.
func NewUKI(t testing.TB, kernel string) UKI {
	t.Helper()
	dir := t.TempDir()
	u := UKI{dir: dir, Linux: filepath.Join(dir, "linux"), OSRel: filepath.Join(dir, "osrel"), Cmdline: filepath.Join(dir, "cmdline")}
	for path, content := range map[string]string{u.Linux: "kernel " + kernel, u.OSRel: "ID=debian\nVERSION_ID=12\n", u.Cmdline: "root=/dev/vda ro"} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// Boot extends PCR 11 of the TPM at spec as systemd-stub and systemd-pcrphase do for
// u up to the enter-initrd phase: for each section, SHA-256 of its name with the
// trailing NUL, then of its content; then SHA-256 of "enter-initrd" (equal to
// systemd-measure calculate). It uses tpm2_pcrextend.
func (u UKI) Boot(t testing.TB, spec string) {
	t.Helper()
	RequirePeer(t, "tpm2_pcrextend")
	var digests [][32]byte
	for _, sec := range []struct{ name, path string }{{"linux", u.Linux}, {"osrel", u.OSRel}, {"cmdline", u.Cmdline}} {
		content, err := os.ReadFile(sec.path)
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, sha256.Sum256([]byte("."+sec.name+"\x00")), sha256.Sum256(content))
	}
	digests = append(digests, sha256.Sum256([]byte("enter-initrd")))
	for _, d := range digests {
		cmd := exec.Command("tpm2_pcrextend", "11:sha256="+hex.EncodeToString(d[:]))
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+spec)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tpm2_pcrextend: %v\n%s", err, out)
		}
	}
}

// Sign runs systemd-measure sign for u (bank sha256, phase enter-initrd) and returns
// the path of the signature JSON it wrote next to u's sections.
func (u UKI) Sign(t testing.TB, spec, priv, pub string) string {
	t.Helper()
	RequirePeer(t, SystemdMeasure)
	cmd := exec.Command(SystemdMeasure, "sign", "--tpm2-device="+spec,
		"--linux="+u.Linux, "--osrel="+u.OSRel, "--cmdline="+u.Cmdline,
		"--bank=sha256", "--phase=enter-initrd", "--private-key="+priv, "--public-key="+pub)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("systemd-measure sign: %v", err)
	}
	path := filepath.Join(u.dir, "tpm2-pcr-signature.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// SignedBoot is a machine booted into a UKI whose PCR 11 value is signed.
type SignedBoot struct {
	// PublicKey is the PEM public key of the signing key.
	PublicKey string
	// Signature is the booted UKI's signature JSON; OtherSignature is that of
	// another UKI, by the same key.
	Signature, OtherSignature string
}

// BootSigned makes a signing key in dir, boots the TPM at spec into a UKI (PCR 11)
// and signs that UKI and another one with systemd-measure.
func BootSigned(t testing.TB, spec, dir string) SignedBoot {
	t.Helper()
	priv, pub := SigningKey(t, dir)
	booted, other := NewUKI(t, "6.1.0-booted"), NewUKI(t, "6.1.0-other")
	booted.Boot(t, spec)
	return SignedBoot{PublicKey: pub, Signature: booted.Sign(t, spec, priv, pub), OtherSignature: other.Sign(t, spec, priv, pub)}
}
