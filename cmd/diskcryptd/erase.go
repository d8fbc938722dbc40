package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/luks2"
)

// eraseKMS is erase's --kms-revoke: after the keyslots, the KEKs of the volume's
// KMIP tokens are revoked and destroyed in the KMS, server by server.
type eraseKMS struct {
	revoke bool
	kf     kmipFlags
	prot   *kms.Protector
}

// kekTarget is one KEK to revoke: the token that names it and its servers.
type kekTarget struct {
	token   int
	uid     string
	servers []string
}

func (k *eraseKMS) register(f *flagSet) {
	f.BoolVar(&k.revoke, "kms-revoke", false, "also revoke and destroy the KEK of every KMIP token in the KMS (each server the token names; needs --kmip-ca, --kmip-cert, --kmip-key)")
	k.kf.register(f, false)
}

// plan reads the KMIP tokens before the erase (which drops them) and checks that the
// revocation can be attempted: a usage error here stops the erase before anything
// is destroyed.
func (k *eraseKMS) plan(e *env, v *luks2.Volume) ([]kekTarget, error) {
	if !k.revoke {
		return nil, nil
	}
	p, err := k.kf.protector(e)
	if err != nil {
		return nil, err
	}
	k.prot = p
	var out []kekTarget
	seen := map[string]bool{}
	for _, t := range v.Metadata().Tokens {
		if t.Type != kms.TokenType {
			continue
		}
		raw, err := v.ExportToken(t.ID)
		if err != nil {
			return nil, err
		}
		tok, err := kms.ParseToken(raw)
		if err != nil {
			return nil, fmt.Errorf("token %d: %w", t.ID, err)
		}
		servers := tok.Servers
		if k.kf.servers != "" {
			if servers, err = kms.ParseServers(k.kf.servers); err != nil {
				return nil, withCode(exitUsage, "", err)
			}
		}
		if seen[tok.KEKUID] {
			continue
		}
		seen[tok.KEKUID] = true
		out = append(out, kekTarget{token: t.ID, uid: tok.KEKUID, servers: servers})
	}
	if len(out) == 0 {
		return nil, usageErrorf("--kms-revoke: the volume has no KMIP token, so no KEK to revoke; nothing was erased")
	}
	return out, nil
}

// errKEKNotRevoked is returned when a KEK could be revoked and destroyed on no server.
var errKEKNotRevoked = errors.New("KEK not revoked and destroyed on any server")

// run revokes then destroys each target's KEK on each of its servers, one report
// line and one audit record per server. It fails when a KEK was destroyed nowhere.
func (k *eraseKMS) run(ctx context.Context, e *env, device, uuid string, targets []kekTarget) error {
	var errs []error
	for _, t := range targets {
		ok := false
		for _, srv := range t.servers {
			rec := audit.Record{Kind: audit.KindErase, Device: device, VolumeUUID: uuid, Protector: kms.Name,
				Token: audit.TokenID(t.token), TokenType: kms.TokenType, KMSServer: srv, KEKUID: t.uid}
			rerr := k.prot.Revoke(ctx, []string{srv}, t.uid, "diskcryptd erase of volume "+uuid)
			derr := k.prot.Destroy(ctx, []string{srv}, t.uid)
			switch {
			case derr == nil && rerr == nil:
				rec.Detail = "KEK revoked and destroyed"
				fmt.Fprintf(e.stdout, "%s: KMS %s: KEK %s revoked and destroyed\n", device, srv, t.uid)
				ok = true
			case derr == nil:
				// Revoked earlier (by another server of a replicated KMS, or before).
				rec.Detail = "KEK destroyed (revoke: " + rerr.Error() + ")"
				fmt.Fprintf(e.stdout, "%s: KMS %s: KEK %s destroyed (it was not active: %v)\n", device, srv, t.uid, rerr)
				ok = true
			default:
				err := errors.Join(rerr, derr)
				rec.Result, rec.Error = audit.Failure, err.Error()
				fmt.Fprintf(e.stdout, "%s: KMS %s: KEK %s NOT destroyed: %v\n", device, srv, t.uid, err)
			}
			auditEvent(ctx, e, rec, nil)
		}
		if !ok {
			errs = append(errs, fmt.Errorf("token %d: KEK %s: %w", t.token, t.uid, errKEKNotRevoked))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return withCode(exitUsage, "the keyslots are destroyed all the same; revoke the KEK in the KMS by hand", err)
	}
	return nil
}
