package luks2

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
)

// ReplaceKeyslots adds a keyslot for passphrase with token bound to it, and drops
// the keyslots in drop together with every token bound to them alone, in one
// metadata update: a crash leaves the volume either as it was or with the new keyslot
// and token in place of the dropped ones, never both missing. The new keyslot's
// material is written and synced before the update; the dropped keyslots' areas are
// overwritten after it. token is the token's JSON object (its "keyslots" member is
// set to the new keyslot); tokenID may be AnyToken (the lowest id free before the
// update, so the new token never reuses a dropped token's id), or the id of a token
// this update drops (the new token takes its place, and its place in token order).
//
// It is how a protector is rotated: a new recovery key replacing the old one, a TPM2
// protector resealed to new PCR values. It returns the new keyslot and token ids and
// the ids of the tokens dropped.
func (v *Volume) ReplaceKeyslots(ctx context.Context, vk *VolumeKey, passphrase []byte, opts *KeyslotOptions, token json.RawMessage, tokenID int, drop []int) (slot, tid int, droppedTokens []int, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.writable(); err != nil {
		return 0, 0, nil, err
	}
	if _, err := parseTokenLoose(token); err != nil {
		return 0, 0, nil, err
	}
	dropSet := map[int]bool{}
	var olds []*keyslotEntry
	for _, id := range drop {
		e := v.meta.keyslots[id]
		if e == nil {
			return 0, 0, nil, fmt.Errorf("%w: %d", ErrKeyslotNotFound, id)
		}
		if !dropSet[id] {
			olds = append(olds, e)
		}
		dropSet[id] = true
	}
	reuse := false
	if t := v.meta.tokens[tokenID]; t != nil && len(t.keyslots) > 0 {
		reuse = true
		for _, k := range t.keyslots {
			reuse = reuse && dropSet[k]
		}
	}
	if reuse {
		tid = tokenID
	} else if tid, err = v.meta.freeToken(tokenID); err != nil {
		return 0, 0, nil, err
	}
	n, slot, err := v.prepareKeyslot(ctx, v.meta, vk, passphrase, AnySlot, opts)
	if err != nil {
		return 0, 0, nil, err
	}
	n, err = n.withoutKeyslots(dropSet)
	if err != nil {
		return 0, 0, nil, err
	}
	for id, t := range v.meta.tokens {
		if len(t.keyslots) == 0 {
			continue
		}
		alone := true
		for _, k := range t.keyslots {
			alone = alone && dropSet[k]
		}
		if alone {
			delete(n.tokens, id)
			droppedTokens = append(droppedTokens, id)
		}
	}
	sort.Ints(droppedTokens)
	raw, err := setIDList(token, "keyslots", []int{slot})
	if err != nil {
		return 0, 0, nil, err
	}
	te, err := parseToken(raw)
	if err != nil {
		return 0, 0, nil, err
	}
	n.tokens[tid] = te
	if err := v.commit(n, v.bin.label, v.bin.subsystem); err != nil {
		return 0, 0, nil, err
	}
	for _, e := range olds {
		if err := v.wipeArea(ctx, e); err != nil {
			return slot, tid, droppedTokens, err
		}
	}
	return slot, tid, droppedTokens, nil
}
