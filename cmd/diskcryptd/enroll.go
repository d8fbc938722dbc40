package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/unlock"
)

func cmdEnroll(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usageErrorf("usage: diskcryptd enroll tpm2|recovery|clevis --key-file EXISTING DEVICE")
	}
	kind, args := args[0], args[1:]
	if kind == "kmip" {
		return cmdEnrollKMIP(ctx, e, args)
	}
	f := newFlags(e, "enroll "+kind, "--key-file EXISTING [flags] DEVICE")
	keyFile := f.String("key-file", "", "an existing passphrase, key file or recovery key (- for stdin)")
	var tf tpmFlags
	var cf clevisFlags
	replace := new(bool)
	if kind == "recovery" {
		replace = f.Bool("replace", false, "replace the existing recovery key: the old keyslot and token go in the same metadata commit")
	}
	if kind == "tpm2" {
		tf.register(f, true)
	}
	if kind == "clevis" {
		tf.register(f, false)
		cf.registerEnroll(f)
	}
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	var enr unlock.Enroller
	switch kind {
	case "tpm2":
		p, err := tf.protector(e, true)
		if err != nil {
			return err
		}
		enr = p
	case "recovery":
		enr = recoveryEnroller{}
	case "clevis":
		if enr, err = cf.enroller(e, tf.device); err != nil {
			return err
		}
	default:
		return usageErrorf("unknown protector %q (tpm2, recovery, clevis)", kind)
	}
	v, vk, err := openWithKeyFile(ctx, e, *keyFile, pos[0])
	if err != nil {
		return err
	}
	defer v.Close()
	defer vk.Wipe()
	en, err := enr.Enroll(ctx)
	if err != nil {
		return err
	}
	defer clear(en.Passphrase)
	if *replace {
		return replaceRecovery(ctx, e, v, vk, en, pos[0])
	}
	tok, err := json.Marshal(en.Token)
	if err != nil {
		return fmt.Errorf("encoding token: %w", err)
	}
	slot, tid, err := v.AddKeyslotWithToken(ctx, vk, en.Passphrase, luks2.AnySlot,
		&luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, tok, luks2.AnyToken)
	rec := volumeRecord(audit.KindEnroll, pos[0], v)
	rec.Protector, rec.Keyslots, rec.Token = kind, []int{slot}, audit.TokenID(tid)
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	e.log.Info("protector enrolled", "device", pos[0], "protector", kind, "keyslot", slot, "token", tid)
	if kind == "recovery" {
		fmt.Fprintf(e.stderr, "A recovery key was added to keyslot %d (token %d). Write it down and keep it offline; it is shown only once:\n", slot, tid)
		_, err := fmt.Fprintf(e.stdout, "%s\n", en.Passphrase)
		return err
	}
	fmt.Fprintf(e.stdout, "%s protector enrolled in keyslot %d (token %d)\n", kind, slot, tid)
	return nil
}

// recoveryEnroller enrolls a systemd-format recovery key.
type recoveryEnroller struct{}

func (recoveryEnroller) Enroll(context.Context) (*unlock.Enrollment, error) {
	return unlock.NewRecoveryKey()
}

// openWithKeyFile opens device read-write and recovers its volume key with the
// passphrase or recovery key in keyFile (what every enrolment starts from). The
// caller closes the volume and wipes the key; the key file's bytes are wiped here.
func openWithKeyFile(ctx context.Context, e *env, keyFile, device string) (*luks2.Volume, *luks2.VolumeKey, error) {
	existing, err := readKeyFile(e, keyFile)
	if err != nil {
		return nil, nil, err
	}
	defer clear(existing)
	v, err := luks2.OpenFile(device, luks2.ReadWrite)
	if err != nil {
		return nil, nil, err
	}
	vk, _, err := unlockWithKey(ctx, v, existing, luks2.AnySlot)
	if err != nil {
		v.Close()
		return nil, nil, err
	}
	return v, vk, nil
}

// unlockWithKey recovers the volume key with key file contents; when they do not
// open a keyslot as given but read as a recovery key typed differently (no dashes,
// upper case, a trailing newline), it tries the canonical recovery key text.
func unlockWithKey(ctx context.Context, v *luks2.Volume, key []byte, slot int) (*luks2.VolumeKey, int, error) {
	vk, got, err := unlockSlot(ctx, v, key, slot)
	if err == nil {
		return vk, got, nil
	}
	canon, perr := unlock.ParseRecoveryKey(key)
	if perr != nil {
		return nil, -1, err
	}
	defer clear(canon)
	if subtle.ConstantTimeCompare(canon, key) == 1 {
		return nil, -1, err
	}
	return unlockSlot(ctx, v, canon, slot)
}

func unlockSlot(ctx context.Context, v *luks2.Volume, key []byte, slot int) (*luks2.VolumeKey, int, error) {
	if slot == luks2.AnySlot {
		return v.Unlock(ctx, key)
	}
	vk, err := v.UnlockKeyslot(ctx, slot, key)
	return vk, slot, err
}
