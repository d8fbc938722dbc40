package tpm

import (
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// seedBlob is TPM2B_PRIVATE || TPM2B_PUBLIC of a keyed-hash object, as systemd's
// "tpm2-blob" carries it.
func seedBlob() []byte {
	pub := tpm2.New2B(tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true},
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: make([]byte, 32)},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash,
			&tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
	})
	return append(tpm2.Marshal(tpm2.TPM2BPrivate{Buffer: make([]byte, 64)}), tpm2.Marshal(pub)...)
}

// FuzzSystemdToken feeds "systemd-tpm2" token JSON (seeded with the shapes systemd
// 252 to 255 write) to ParseSystemdToken and decodes its sealed object, PIN salt and
// persistent SRK: errors are fine, panics and hangs are not.
func FuzzSystemdToken(f *testing.F) {
	blob := base64.StdEncoding.EncodeToString(seedBlob())
	for _, extra := range []map[string]any{
		{},
		{"tpm2-pin": true, "tpm2_salt": "c2FsdA=="},
		{"tpm2_pubkey": "LS0tLS1CRUdJTg==", "tpm2_pubkey_pcrs": []int{11}},
		{"tpm2_srk": "AAAA", "tpm2-primary-alg": "rsa", "tpm2-pcr-bank": "sha1"},
	} {
		tok := map[string]any{"type": "systemd-tpm2", "keyslots": []string{"1"}, "tpm2-blob": blob,
			"tpm2-pcrs": []int{7}, "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc",
			"tpm2-policy-hash": "00ff", "tpm2-pin": false}
		for k, v := range extra {
			tok[k] = v
		}
		b, _ := json.Marshal(tok)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseSystemdToken(b)
		if err != nil {
			return
		}
		_, _ = st.Sealed()
		_, _ = st.SaltBytes()
		if raw, err := base64.StdEncoding.DecodeString(st.SRK); err == nil {
			_, _ = ParseSerializedSRK(raw)
		}
	})
}

// FuzzParseBlob feeds sealed-object blobs (systemd's tpm2-blob, clevis's
// jwk_priv||jwk_pub) to ParseBlob.
func FuzzParseBlob(f *testing.F) {
	f.Add(seedBlob())
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		priv, pub, err := ParseBlob(b)
		if err != nil {
			return
		}
		s := &Sealed{Private: priv, Public: pub}
		_ = s.Blob()
	})
}
