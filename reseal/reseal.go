// Package reseal replaces a volume's TPM2 protector whose PCR policy no longer
// matches the machine (after a firmware, boot loader or Secure Boot update) with a
// fresh one sealed to the current PCR values, once the volume has been opened another
// authorized way (a KMS or Tang token, a configured key file, the recovery key).
//
// # Contract
//
// A token is stale when its unseal failed with tpm.ErrPolicyMismatch and nothing
// else: a "systemd-tpm2" token with a plain PCR policy (no PIN, which an unattended
// daemon cannot supply; not a signed policy, which survives updates by design), bound
// to keyslots that no other token uses and that did not open the volume this time.
//
// Reseal enrols a new TPM2 secret to the same PCRs and bank as the stale token, then
// commits one metadata update that adds the new keyslot and token and drops the stale
// keyslot and token (luks2.Volume.ReplaceKeyslots): the new keyslot's material is on
// disk before the update, the stale area is overwritten after it. A power cut at any
// write leaves a volume that opens with the fallback and with exactly one of the two
// TPM2 tokens (fault-injection test in this package).
//
// Every reseal, done or failed, is one audit record (audit.KindReseal). No secret
// leaves this package: the new keyslot passphrase is wiped after the update.
package reseal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/hashicorp/go-hclog"
)

// ErrNothingStale means no TPM2 token of the volume failed because its PCRs changed.
var ErrNothingStale = errors.New("reseal: no TPM2 token failed because of changed PCRs; nothing to reseal")

// ErrNotResealable is wrapped when a stale token cannot be resealed unattended (it
// needs a PIN, shares its keyslot with another token, or its keyslot opened the
// volume).
var ErrNotResealable = errors.New("reseal: token cannot be resealed")

// Stale is a TPM2 token whose PCR policy no longer matches.
type Stale struct {
	// Token is the token as stored.
	Token unlock.Token
	// PCRs and Bank are its PCR policy, reused for the new enrolment.
	PCRs []int
	Bank string
}

// FindStale returns the tokens of rep's attempts that failed with
// tpm.ErrPolicyMismatch and can be resealed, given the keyslots that opened the volume
// (never dropped). A stale token that cannot be resealed is reported in the error
// (wrapping ErrNotResealable) next to the others returned. With no stale token at all
// it returns ErrNothingStale.
func FindStale(md *luks2.Metadata, rep *unlock.Report, opened []int) ([]Stale, error) {
	if rep == nil {
		return nil, ErrNothingStale
	}
	usedBy := map[int][]int{} // keyslot -> tokens
	for _, t := range md.Tokens {
		for _, k := range t.Keyslots {
			usedBy[k] = append(usedBy[k], t.ID)
		}
	}
	isOpened := map[int]bool{}
	for _, k := range opened {
		isOpened[k] = true
	}
	var out []Stale
	var errs []error
	seen := false
	for _, a := range rep.Attempts {
		if a.Err == nil || !errors.Is(a.Err, tpm.ErrPolicyMismatch) || a.Token.Type != tpm.TypeSystemd {
			continue
		}
		seen = true
		st, err := tpm.ParseSystemdToken(a.Token.JSON)
		if err != nil {
			errs = append(errs, fmt.Errorf("token %d: %w", a.Token.ID, err))
			continue
		}
		bad := func(why string) {
			errs = append(errs, fmt.Errorf("%w: token %d: %s", ErrNotResealable, a.Token.ID, why))
		}
		switch {
		case st.PIN:
			bad("it needs a PIN; reseal it by hand: diskcryptd reseal")
			continue
		case st.Signed():
			bad("it has a signed PCR policy; update the signature instead")
			continue
		case len(a.Token.Keyslots) == 0:
			bad("it is bound to no keyslot")
			continue
		}
		ok := true
		for _, k := range a.Token.Keyslots {
			if isOpened[k] {
				bad(fmt.Sprintf("its keyslot %d opened the volume", k))
				ok = false
				break
			}
			if len(usedBy[k]) != 1 {
				bad(fmt.Sprintf("its keyslot %d is shared with tokens %v", k, usedBy[k]))
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		bank := st.PCRBank
		if bank == "" {
			bank = "sha256"
		}
		out = append(out, Stale{Token: a.Token, PCRs: append([]int{}, st.PCRs...), Bank: bank})
	}
	if !seen {
		return nil, ErrNothingStale
	}
	return out, errors.Join(errs...)
}

// EnrollerFunc returns the enroller of a new TPM2 protector sealed to pcrs in bank.
type EnrollerFunc func(pcrs []int, bank string) (unlock.Enroller, error)

// Resealer reseals stale TPM2 tokens.
type Resealer struct {
	// Enroller makes the new TPM2 enrolment (required).
	Enroller EnrollerFunc
	// Audit records each reseal; nil records nothing.
	Audit *audit.Logger
	// Logger receives one line per reseal; never a secret. Nil discards.
	Logger hclog.Logger
}

// Result is one reseal done.
type Result struct {
	// OldToken and OldKeyslots are what was dropped.
	OldToken    int
	OldKeyslots []int
	// NewToken and NewKeyslot are what replaced them.
	NewToken   int
	NewKeyslot int
	// PCRs and Bank are the policy of both.
	PCRs []int
	Bank string
}

// String says what happened, for status and logs.
func (r Result) String() string {
	return fmt.Sprintf("TPM2 token %d (keyslots %v) resealed as token %d (keyslot %d) to %s PCRs %s",
		r.OldToken, r.OldKeyslots, r.NewToken, r.NewKeyslot, r.Bank, tpm.FormatPCRs(r.PCRs))
}

// Reseal reseals each stale token of v (opened read-write, unlocked as vk). It stops
// at the first failure and returns the reseals done so far. base is the start of the
// audit records (actor, volume name, device).
func (r *Resealer) Reseal(ctx context.Context, v *luks2.Volume, vk *luks2.VolumeKey, stale []Stale, base audit.Record) ([]Result, error) {
	log := r.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	var done []Result
	for _, s := range stale {
		res, err := r.one(ctx, v, vk, s)
		rec := base
		rec.Kind = audit.KindReseal
		rec.VolumeUUID = v.Metadata().UUID
		rec.Protector = "tpm2"
		rec.TokenType = tpm.TypeSystemd
		rec.PCRBank = s.Bank
		rec.Token = audit.TokenID(s.Token.ID)
		rec.Keyslots = s.Token.Keyslots
		if err != nil {
			rec.Result, rec.Error = audit.Failure, err.Error()
			r.Audit.Emit(ctx, rec)
			log.Error("reseal failed", "token", s.Token.ID, "error", err)
			return done, fmt.Errorf("reseal of TPM2 token %d: %w", s.Token.ID, err)
		}
		rec.Result, rec.Detail = audit.Success, res.String()
		r.Audit.Emit(ctx, rec)
		log.Info("resealed", "old_token", res.OldToken, "new_token", res.NewToken, "new_keyslot", res.NewKeyslot, "pcrs", tpm.FormatPCRs(res.PCRs), "bank", res.Bank)
		done = append(done, res)
	}
	return done, nil
}

func (r *Resealer) one(ctx context.Context, v *luks2.Volume, vk *luks2.VolumeKey, s Stale) (Result, error) {
	// The token must still be there as it was tried: another writer may have been first.
	cur, err := v.ExportToken(s.Token.ID)
	if err != nil {
		return Result{}, err
	}
	if !sameJSON(cur, s.Token.JSON) {
		return Result{}, fmt.Errorf("%w: token %d changed since it was tried", ErrNotResealable, s.Token.ID)
	}
	if r.Enroller == nil {
		return Result{}, errors.New("reseal: no TPM2 enroller configured")
	}
	enr, err := r.Enroller(s.PCRs, s.Bank)
	if err != nil {
		return Result{}, err
	}
	en, err := enr.Enroll(ctx)
	if err != nil {
		return Result{}, err
	}
	defer clear(en.Passphrase)
	return Apply(ctx, v, vk, s, en)
}

// Apply commits a new enrolment in place of stale token s: one metadata update, see
// the package doc. The caller wipes en.Passphrase.
func Apply(ctx context.Context, v *luks2.Volume, vk *luks2.VolumeKey, s Stale, en *unlock.Enrollment) (Result, error) {
	tok, err := json.Marshal(en.Token)
	if err != nil {
		return Result{}, fmt.Errorf("reseal: encoding token: %w", err)
	}
	// The new token takes the stale one's id, and so its place in the order tokens
	// are tried at boot.
	slot, tid, dropped, err := v.ReplaceKeyslots(ctx, vk, en.Passphrase, &luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, tok, s.Token.ID, s.Token.Keyslots)
	if err != nil {
		return Result{}, err
	}
	if len(dropped) != 1 || dropped[0] != s.Token.ID {
		// FindStale checked the keyslots are the token's alone; say so if not.
		return Result{}, fmt.Errorf("reseal: dropped tokens %v, expected only %d", dropped, s.Token.ID)
	}
	ks := append([]int{}, s.Token.Keyslots...)
	sort.Ints(ks)
	return Result{OldToken: s.Token.ID, OldKeyslots: ks, NewToken: tid, NewKeyslot: slot, PCRs: s.PCRs, Bank: s.Bank}, nil
}

// sameJSON reports whether two JSON objects are equal as values.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}
