package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/reseal"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// resealer builds the reseal machinery for the TPM at device.
func resealer(e *env, device string, al *audit.Logger) *reseal.Resealer {
	return &reseal.Resealer{
		Enroller: func(pcrs []int, bank string) (unlock.Enroller, error) {
			return tpm.NewProtector(tpm.Config{Device: device, PCRs: pcrs, Bank: bank, Logger: e.log})
		},
		Audit:  al,
		Logger: e.log,
	}
}

func cmdReseal(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "reseal", "[--tpm2-device DEV] [clevis and KMIP flags] [--key-file F] DEVICE")
	keyFile := f.String("key-file", "", "a passphrase, key file or recovery key (- for stdin), when no other token opens the volume")
	var u unlockFlags
	f.DurationVar(&u.timeout, "token-timeout", 30*time.Second, "deadline for each token")
	u.tpm.register(f, false)
	u.clevis.register(f)
	u.kmip.register(f, false)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	tf := u.tpm
	prots, err := u.protectors(e)
	if err != nil {
		return err
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	al := auditLogger(e)
	// Try the tokens: that finds the stale TPM2 tokens, and may open the volume
	// through another one (Tang, KMS).
	vk, rep, terr := daemon.RecoverKey(ctx, v, prots, u.timeout, e.log)
	daemon.EmitReleases(ctx, al, rep, prots, volumeRecord(audit.KindKeyRelease, pos[0], v))
	var opened []int
	if terr == nil {
		opened = rep.Winner().Token.Keyslots
	} else if *keyFile != "" {
		key, err := readKeyFile(e, *keyFile)
		if err != nil {
			return err
		}
		var slot int
		vk, slot, err = unlockWithKey(ctx, v, key, luks2.AnySlot)
		clear(key)
		rec := volumeRecord(audit.KindKeyRelease, pos[0], v)
		rec.Protector = "key-file"
		if err == nil {
			rec.Keyslots = []int{slot}
		}
		auditEvent(ctx, e, rec, err)
		if err != nil {
			return err
		}
		opened = []int{slot}
	}
	if vk == nil {
		if errors.Is(terr, tpm.ErrPolicyMismatch) {
			return withCode(exitPermission, "open it another authorized way: diskcryptd reseal --key-file - DEVICE (the recovery key or a passphrase)", terr)
		}
		return terr
	}
	defer vk.Wipe()
	stale, ferr := reseal.FindStale(v.Metadata(), rep, opened)
	if errors.Is(ferr, reseal.ErrNothingStale) {
		fmt.Fprintf(e.stdout, "%s: no TPM2 token failed because of changed PCRs; nothing to reseal\n", pos[0])
		return nil
	}
	done, err := resealer(e, tf.device, al).Reseal(ctx, v, vk, stale, audit.Record{Actor: "cli", Device: pos[0]})
	for _, r := range done {
		fmt.Fprintf(e.stdout, "%s: %s\n", pos[0], r)
	}
	if err := errors.Join(ferr, err); err != nil {
		return err
	}
	return nil
}

// statusNote is the REASON column of a daemon volume: why it is not unlocked, and
// what its last reseal did.
func statusNote(s daemon.VolumeStatus) string {
	switch {
	case s.Reason == "":
		return s.Reseal
	case s.Reseal == "":
		return s.Reason
	}
	return s.Reason + "; " + s.Reseal
}
