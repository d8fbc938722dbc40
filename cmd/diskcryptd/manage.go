package main

import (
	"context"
	"fmt"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
)

func cmdFormat(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "format", "--key-file F [--key-size 256|512] [--sector-size 512|4096] [kdf flags] [--label L] [--force] DEVICE")
	keyFile := f.String("key-file", "", "the first keyslot's passphrase or key file (- for stdin)")
	keySize := f.Int("key-size", luks2.DefaultKeySize, "volume key size in bits: 512 (AES-256-XTS) or 256 (AES-128-XTS)")
	sectorSize := f.Int("sector-size", 0, "encryption sector size: 512 or 4096 (default: 4096 where the device allows)")
	label := f.String("label", "", "volume label")
	subsystem := f.String("subsystem", "", "volume subsystem")
	uuid := f.String("uuid", "", "volume UUID (default: random)")
	offset := f.Int64("offset", 0, "data offset in 512-byte sectors (default 32768 = 16 MiB)")
	force := f.Bool("force", false, "format even if the device carries a filesystem, swap, a partition table or a LUKS header")
	var flagList listFlag
	f.Var(&flagList, "persistent-flag", "persistent activation flag (allow-discards, same-cpu-crypt, submit-from-crypt-cpus, no-read-workqueue, no-write-workqueue); repeatable")
	var kdf kdfFlags
	kdf.register(f)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	pass, err := readKeyFile(e, *keyFile)
	if err != nil {
		return err
	}
	defer clear(pass)
	opts := &luks2.FormatOptions{
		KeySize: *keySize, SectorSize: *sectorSize, DataOffset: *offset * 512,
		UUID: *uuid, Label: *label, Subsystem: *subsystem, Flags: flagList,
		Keyslot: luks2.KeyslotOptions{KDF: kdf.options()}, Force: *force,
	}
	v, vk, err := luks2.FormatFile(ctx, pos[0], pass, opts)
	if err != nil {
		return err
	}
	vk.Wipe()
	md := v.Metadata()
	v.Close()
	e.log.Info("volume formatted", "device", pos[0], "uuid", md.UUID)
	fmt.Fprintf(e.stdout, "%s formatted: LUKS2 %s, %d-bit key, %d-byte sectors, UUID %s\n",
		pos[0], md.Cipher, md.KeySize*8, md.SectorSize, md.UUID)
	return nil
}

func cmdHeader(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "backup" && args[0] != "restore") {
		return usageErrorf("usage: diskcryptd header backup|restore --header-backup-file FILE DEVICE")
	}
	sub := args[0]
	f := newFlags(e, "header "+sub, "--header-backup-file FILE DEVICE")
	file := f.String("header-backup-file", "", "the backup file")
	pos, err := f.parse(args[1:], 1, 1)
	if err != nil {
		return err
	}
	if *file == "" {
		return usageErrorf("pass --header-backup-file FILE")
	}
	if sub == "backup" {
		v, err := luks2.OpenFile(pos[0], luks2.ReadOnly)
		if err != nil {
			return err
		}
		defer v.Close()
		if err := v.BackupFile(*file); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "header of %s backed up to %s (keep it as safe as a key: it holds every keyslot)\n", pos[0], *file)
		return nil
	}
	err = luks2.RestoreHeaderFile(pos[0], *file)
	rec := audit.Record{Kind: audit.KindHeaderRestore, Device: pos[0], Detail: "from " + *file}
	if v, oerr := luks2.OpenFile(pos[0], luks2.ReadOnly); oerr == nil {
		rec.VolumeUUID = v.Metadata().UUID
		v.Close()
	}
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "header of %s restored from %s\n", pos[0], *file)
	return nil
}

func cmdRepair(_ context.Context, e *env, args []string) error {
	f := newFlags(e, "repair", "DEVICE")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	before := v.Metadata()
	if err := v.Repair(); err != nil {
		return err
	}
	if before.PrimaryValid && before.SecondaryValid {
		fmt.Fprintf(e.stdout, "%s: both header copies are valid; nothing to repair\n", pos[0])
		return nil
	}
	fmt.Fprintf(e.stdout, "%s: header copies repaired\n", pos[0])
	return nil
}

func cmdErase(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "erase", "--batch-mode [--kms-revoke --kmip-ca F --kmip-cert F --kmip-key F] DEVICE")
	var ek eraseKMS
	ek.register(f)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if !e.batch {
		return usageErrorf("erase destroys every keyslot and makes the data unreadable forever; confirm with --batch-mode (-q)")
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	keks, err := ek.plan(e, v)
	if err != nil {
		return err
	}
	rec := volumeRecord(audit.KindErase, pos[0], v)
	for _, k := range v.Metadata().Keyslots {
		rec.Keyslots = append(rec.Keyslots, k.ID)
	}
	err = v.Erase(ctx)
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: every keyslot destroyed; the data is unrecoverable\n", pos[0])
	return ek.run(ctx, e, pos[0], rec.VolumeUUID, keks)
}
