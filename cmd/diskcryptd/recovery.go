package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// errNoRecoveryKey is returned by enroll recovery --replace on a volume without one.
var errNoRecoveryKey = errors.New("the volume has no recovery key to replace")

// replaceRecovery puts the new recovery key en in place of every existing one:
// the new keyslot and token are added and the old recovery keyslots and tokens
// dropped in one metadata commit, then the old keyslot areas are overwritten.
// Keyslots another token also uses are refused.
func replaceRecovery(ctx context.Context, e *env, v *luks2.Volume, vk *luks2.VolumeKey, en *unlock.Enrollment, device string) error {
	md := v.Metadata()
	var drop, oldTokens []int
	usedBy := map[int][]int{}
	for _, t := range md.Tokens {
		for _, k := range t.Keyslots {
			usedBy[k] = append(usedBy[k], t.ID)
		}
	}
	for _, t := range md.Tokens {
		if t.Type != unlock.RecoveryTokenType {
			continue
		}
		oldTokens = append(oldTokens, t.ID)
		for _, k := range t.Keyslots {
			if len(usedBy[k]) != 1 {
				return usageErrorf("recovery keyslot %d is also used by tokens %v; remove it by hand (diskcryptd keyslot remove)", k, usedBy[k])
			}
			drop = append(drop, k)
		}
	}
	if len(oldTokens) == 0 {
		return withCode(exitUsage, "add one: diskcryptd enroll recovery --key-file EXISTING DEVICE", errNoRecoveryKey)
	}
	tok, err := json.Marshal(en.Token)
	if err != nil {
		return fmt.Errorf("encoding token: %w", err)
	}
	slot, tid, dropped, err := v.ReplaceKeyslots(ctx, vk, en.Passphrase, &luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, tok, luks2.AnyToken, drop)
	rec := volumeRecord(audit.KindRecoveryReplace, device, v)
	rec.Protector, rec.Keyslots, rec.Token = "recovery", []int{slot}, audit.TokenID(tid)
	rec.Detail = fmt.Sprintf("replaced recovery keyslots %v (tokens %v)", drop, oldTokens)
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	e.log.Info("recovery key replaced", "device", device, "keyslot", slot, "token", tid, "old_keyslots", drop, "old_tokens", dropped)
	fmt.Fprintf(e.stderr, "A new recovery key replaced keyslots %v: it is in keyslot %d (token %d). The old recovery key no longer opens the volume. Write the new one down and keep it offline; it is shown only once:\n", drop, slot, tid)
	_, err = fmt.Fprintf(e.stdout, "%s\n", en.Passphrase)
	return err
}
