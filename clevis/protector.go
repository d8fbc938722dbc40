package clevis

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/diskcryptd/diskcryptd/tang"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// Protector unseals clevis LUKS2 tokens of every pin (tang, tpm2, sss).
type Protector struct {
	// Pins decrypts the tokens' JWEs.
	Pins *Pins
}

var (
	_ unlock.Protector = (*Protector)(nil)
	_ unlock.Enroller  = (*Enroller)(nil)
)

// Name implements unlock.Protector.
func (p *Protector) Name() string { return "clevis" }

// Unseal implements unlock.Protector: it returns the keyslot passphrase of a
// "clevis" token; other token types are unlock.ErrNotMine.
func (p *Protector) Unseal(ctx context.Context, tok unlock.Token) ([]byte, error) {
	if tok.Type != TokenType {
		return nil, fmt.Errorf("clevis: token %d of type %q: %w", tok.ID, tok.Type, unlock.ErrNotMine)
	}
	t, err := ParseToken(tok.JSON)
	if err != nil {
		return nil, fmt.Errorf("token %d: %w", tok.ID, err)
	}
	pass, err := p.Pins.Decrypt(ctx, t.JWE)
	if err != nil {
		return nil, fmt.Errorf("token %d (%s): %w", tok.ID, Describe(t.JWE), err)
	}
	return pass, nil
}

// Enroller binds a new keyslot passphrase with a clevis pin and its configuration.
type Enroller struct {
	// Pins encrypts.
	Pins *Pins
	// Pin is "tang", "tpm2" or "sss".
	Pin string
	// Config is the pin's clevis configuration JSON.
	Config json.RawMessage
}

// NewPassphrase returns a new keyslot passphrase: the base64url text of 32 random
// bytes (256 bits, printable, as clevis's pwmake 256). The caller wipes it.
func NewPassphrase() ([]byte, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("clevis: passphrase: %w", err)
	}
	out := make([]byte, base64.RawURLEncoding.EncodedLen(len(raw)))
	base64.RawURLEncoding.Encode(out, raw[:])
	clear(raw[:])
	return out, nil
}

// Enroll implements unlock.Enroller.
func (e *Enroller) Enroll(ctx context.Context) (*unlock.Enrollment, error) {
	pass, err := NewPassphrase()
	if err != nil {
		return nil, err
	}
	c, err := e.Pins.Encrypt(ctx, e.Pin, e.Config, pass)
	if err != nil {
		clear(pass)
		return nil, err
	}
	tok, err := TokenJSON(c)
	if err != nil {
		clear(pass)
		return nil, err
	}
	return &unlock.Enrollment{Passphrase: pass, Token: tok}, nil
}

// Regen re-binds a JWE after its Tang servers rotated their keys: it decrypts it
// (rotated-out keys still answer /rec), then encrypts the same plaintext with a pin
// tree of the same shape: tang pins bound to the server's current advertisement,
// tpm2 pins sealed again to the same PCRs, sss pins with the same threshold and a
// new polynomial. A new advertisement is trusted only if it is signed by a signing
// key of the advertisement the token holds (asked for with GET /adv/{thp}, which a
// Tang server signs with that key even after rotating it out), or by thp.
//
// tpm2 pins are sealed again to today's values of their PCRs, so every tpm2 pin of
// the tree must unseal first, also where an sss threshold is met without it: a tpm2
// pin whose PCRs changed (another firmware, boot loader or kernel) is never moved to
// the new boot state by a re-binding meant for Tang keys.
func (p *Pins) Regen(ctx context.Context, j *JWE, thp string) (string, error) {
	if err := p.checkTPM2(ctx, j); err != nil {
		return "", fmt.Errorf("clevis: regen seals tpm2 pins again to today's PCR values, so each must unseal first: %w", err)
	}
	pt, err := p.Decrypt(ctx, j)
	if err != nil {
		return "", err
	}
	defer clear(pt)
	return p.reencrypt(ctx, j, pt, thp)
}

// checkTPM2 unseals every tpm2 pin of j's tree, wiping what it gets.
func (p *Pins) checkTPM2(ctx context.Context, j *JWE) error {
	switch j.Clevis.Pin {
	case "tpm2":
		pt, err := p.decryptTPM2(ctx, j)
		clear(pt)
		if err != nil {
			return fmt.Errorf("%s: %w", describe(j), err)
		}
	case "sss":
		for _, c := range j.Children {
			if err := p.checkTPM2(ctx, c); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Pins) reencrypt(ctx context.Context, j *JWE, pt []byte, thp string) (string, error) {
	switch j.Clevis.Pin {
	case "tang":
		adv, how, err := p.trustedAdv(ctx, j.Clevis.Tang, thp)
		if err != nil {
			return "", err
		}
		if p.Trusted != nil {
			p.Trusted(j.Clevis.Tang.URL, how, adv.SigningThumbprints())
		}
		return encryptTangWith(j.Clevis.Tang.URL, adv, pt)
	case "tpm2":
		h := j.Clevis.TPM2
		cfg, _ := json.Marshal(map[string]string{"pcr_ids": h.PCRIDs, "pcr_bank": h.PCRBank})
		return p.encryptTPM2(ctx, cfg, pt)
	case "sss":
		poly, err := newPolynomial(j.Clevis.SSS.T)
		if err != nil {
			return "", err
		}
		defer poly.wipe()
		var jwes []string
		for _, c := range j.Children {
			share, err := poly.point()
			if err != nil {
				return "", err
			}
			s, err := p.reencrypt(ctx, c, share, thp)
			clear(share)
			if err != nil {
				return "", err
			}
			jwes = append(jwes, s)
		}
		key := poly.key()
		defer clear(key)
		hdr := map[string]any{"pin": "sss", "sss": map[string]any{
			"t": j.Clevis.SSS.T, "p": base64.RawURLEncoding.EncodeToString(poly.p.FillBytes(make([]byte, sssBytes))), "jwe": jwes}}
		return encryptDir(key, hdr, pt)
	}
	return "", fmt.Errorf("%w: unknown pin %q", ErrMalformed, j.Clevis.Pin)
}

// trustedAdv fetches a server's current advertisement and decides whether to trust
// it: signed by a signing key of old (the key set in the token), or by thp.
func (p *Pins) trustedAdv(ctx context.Context, th *TangHeader, thp string) (*tang.Adv, string, error) {
	old, err := tang.ParseKeys(th.Adv)
	if err != nil {
		return nil, "", fmt.Errorf("clevis: tang %s: token's adv: %w", th.URL, err)
	}
	var errs []error
	for _, k := range old.Signing {
		oldThp := k.Thumbprint(crypto.SHA256)
		adv, err := p.tang().Adv(ctx, th.URL, oldThp, old.Signing...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, s := range adv.Signing {
			if k.Matches(s.Thumbprint(crypto.SHA256)) {
				return adv, "key already trusted " + oldThp, nil
			}
		}
		if len(adv.ExtraSigners) > 0 {
			return adv, "chain from key already trusted " + oldThp, nil
		}
		errs = append(errs, fmt.Errorf("advertisement at /adv/%s is not signed by that key", oldThp))
	}
	if thp != "" {
		adv, err := p.tang().Adv(ctx, th.URL, thp)
		if err != nil {
			return nil, "", err
		}
		if adv.SignedBy(thp) != nil {
			return adv, "thp", nil
		}
		errs = append(errs, fmt.Errorf("advertisement is not signed by %s", thp))
	}
	return nil, "", fmt.Errorf("clevis: tang %s: %w: the token trusts %s: %w", th.URL, tang.ErrUntrusted,
		strings.Join(old.SigningThumbprints(), ", "), errors.Join(errs...))
}
