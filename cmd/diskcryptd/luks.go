package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdDump(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "dump", "[--json] DEVICE | --volume-key --key-file F [--key-slot N] DEVICE")
	asJSON := f.Bool("json", false, "print the metadata as JSON")
	volumeKey := f.Bool("volume-key", false, "print the volume key in hex (needs --key-file)")
	keyFile := f.String("key-file", "", "passphrase or key file (- for stdin), for --volume-key")
	slot := f.Int("key-slot", luks2.AnySlot, "keyslot to open, for --volume-key")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadOnly)
	if err != nil {
		return err
	}
	defer v.Close()
	if *volumeKey {
		pass, err := readKeyFile(e, *keyFile)
		if err != nil {
			return err
		}
		defer clear(pass)
		vk, err := v.UnlockKeyslot(ctx, *slot, pass)
		if err != nil {
			return err
		}
		defer vk.Wipe()
		key := vk.Bytes()
		defer clear(key)
		text := make([]byte, hex.EncodedLen(len(key))+1)
		hex.Encode(text, key)
		text[len(text)-1] = '\n'
		defer clear(text)
		_, err = e.stdout.Write(text)
		return err
	}
	md := v.Metadata()
	if *asJSON {
		return writeJSON(e.stdout, md)
	}
	return printDump(e.stdout, pos[0], md)
}

func printDump(w io.Writer, path string, md *luks2.Metadata) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "LUKS header information for %s\n\n", path)
	fmt.Fprintf(tw, "Version:\t2\n")
	fmt.Fprintf(tw, "Epoch:\t%d\n", md.Seqid)
	fmt.Fprintf(tw, "Metadata area:\t%d [bytes]\n", md.HeaderSize)
	fmt.Fprintf(tw, "Keyslots area:\t%d [bytes]\n", md.KeyslotsSize)
	fmt.Fprintf(tw, "UUID:\t%s\n", md.UUID)
	fmt.Fprintf(tw, "Label:\t%s\n", orNone(md.Label, "(no label)"))
	fmt.Fprintf(tw, "Subsystem:\t%s\n", orNone(md.Subsystem, "(no subsystem)"))
	fmt.Fprintf(tw, "Flags:\t%s\n", orNone(strings.Join(md.Flags, " "), "(no flags)"))
	if len(md.Requirements) > 0 {
		fmt.Fprintf(tw, "Requirements:\t%s (read-only here)\n", strings.Join(md.Requirements, " "))
	}
	fmt.Fprintf(tw, "Header copies:\tprimary %s, secondary %s\n", validWord(md.PrimaryValid), validWord(md.SecondaryValid))
	fmt.Fprintf(tw, "\nData segment:\n")
	size := "dynamic"
	if !md.DynamicSize {
		size = strconv.FormatInt(md.DataSize, 10) + " [bytes]"
	}
	fmt.Fprintf(tw, "\toffset:\t%d [bytes]\n\tlength:\t%s\n\tcipher:\t%s\n\tkey:\t%d bits\n\tsector:\t%d [bytes]\n\tiv_tweak:\t%d\n",
		md.DataOffset, size, md.Cipher, md.KeySize*8, md.SectorSize, md.IVTweak)
	fmt.Fprintf(tw, "\nKeyslots:\n")
	for _, k := range md.Keyslots {
		fmt.Fprintf(tw, "  %d: %s\n", k.ID, k.Type)
		fmt.Fprintf(tw, "\tKey:\t%d bits\n\tPriority:\t%s\n", k.KeySize*8, k.Priority)
		fmt.Fprintf(tw, "\tPBKDF:\t%s\n", k.KDF.Type)
		if k.KDF.Type == luks2.KDFPBKDF2 {
			fmt.Fprintf(tw, "\tHash:\t%s\n\tIterations:\t%d\n", k.KDF.Hash, k.KDF.Iterations)
		} else {
			fmt.Fprintf(tw, "\tTime cost:\t%d\n\tMemory:\t%d [KiB]\n\tThreads:\t%d\n", k.KDF.Time, k.KDF.MemoryKiB, k.KDF.Parallel)
		}
		fmt.Fprintf(tw, "\tArea:\t%d+%d [bytes], %s %d bits\n\tAF:\t%d stripes, %s\n", k.AreaOffset, k.AreaSize, k.AreaCipher, k.AreaKeySize*8, k.AFStripes, k.AFHash)
	}
	fmt.Fprintf(tw, "\nTokens:\n")
	for _, t := range md.Tokens {
		fmt.Fprintf(tw, "  %d: %s\n\tKeyslots:\t%s\n", t.ID, t.Type, joinInts(t.Keyslots))
	}
	return tw.Flush()
}

func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

func validWord(ok bool) string {
	if ok {
		return "valid"
	}
	return "DAMAGED (run diskcryptd repair)"
}

func joinInts(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ",")
}

func cmdKeyslot(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usageErrorf("usage: diskcryptd keyslot add|remove|list ...")
	}
	switch args[0] {
	case "add":
		return keyslotAdd(ctx, e, args[1:])
	case "remove":
		return keyslotRemove(ctx, e, args[1:])
	case "list":
		return keyslotList(e, args[1:])
	}
	return usageErrorf("unknown keyslot command %q (add, remove, list)", args[0])
}

func keyslotAdd(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "keyslot add", "--key-file F --new-key-file G [--key-slot N] [kdf flags] DEVICE")
	keyFile := f.String("key-file", "", "an existing passphrase or key file (- for stdin)")
	newKeyFile := f.String("new-key-file", "", "the new passphrase or key file (- for stdin)")
	slot := f.Int("key-slot", luks2.AnySlot, "keyslot number for the new key (default: lowest free)")
	priority := f.String("priority", "normal", "keyslot priority: prefer, normal or ignore")
	var kdf kdfFlags
	kdf.register(f)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *keyFile == "-" && *newKeyFile == "-" {
		return usageErrorf("--key-file and --new-key-file cannot both be standard input")
	}
	prio, err := parsePriority(*priority)
	if err != nil {
		return err
	}
	old, err := readKeyFile(e, *keyFile)
	if err != nil {
		return err
	}
	defer clear(old)
	if *newKeyFile == "" {
		return usageErrorf("the new key is needed: pass --new-key-file FILE (or - for standard input)")
	}
	nk, err := readKeyFile(e, *newKeyFile)
	if err != nil {
		return err
	}
	defer clear(nk)
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	id, err := v.AddKeyslotByPassphrase(ctx, old, nk, *slot, &luks2.KeyslotOptions{KDF: kdf.options(), Priority: prio})
	rec := volumeRecord(audit.KindKeyslotAdd, pos[0], v)
	rec.Protector, rec.Keyslots = "passphrase", []int{id}
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	e.log.Info("keyslot added", "device", pos[0], "keyslot", id)
	fmt.Fprintf(e.stdout, "keyslot %d added\n", id)
	return nil
}

func parsePriority(s string) (luks2.Priority, error) {
	switch s {
	case "prefer":
		return luks2.PriorityPrefer, nil
	case "normal", "":
		return luks2.PriorityNormal, nil
	case "ignore":
		return luks2.PriorityIgnore, nil
	}
	return 0, usageErrorf("unknown priority %q (prefer, normal, ignore)", s)
}

func keyslotRemove(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "keyslot remove", "--slot N [--force] DEVICE")
	slot := f.Int("slot", -1, "keyslot to remove")
	f.IntVar(slot, "key-slot", -1, "alias of --slot")
	force := f.Bool("force", false, "remove even the last keyslot (the data becomes unrecoverable)")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *slot < 0 {
		return usageErrorf("which keyslot? pass --slot N (see diskcryptd keyslot list)")
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	if ks := v.Metadata().Keyslots; len(ks) == 1 && ks[0].ID == *slot && !*force {
		return usageErrorf("keyslot %d is the last one: removing it makes the data unrecoverable; add --force if that is what you want (diskcryptd erase does it for every keyslot)", *slot)
	}
	err = v.RemoveKeyslot(ctx, *slot)
	rec := volumeRecord(audit.KindRemove, pos[0], v)
	rec.Keyslots, rec.Detail = []int{*slot}, "keyslot remove"
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	e.log.Info("keyslot removed", "device", pos[0], "keyslot", *slot)
	fmt.Fprintf(e.stdout, "keyslot %d removed\n", *slot)
	return nil
}

func keyslotList(e *env, args []string) error {
	f := newFlags(e, "keyslot list", "[--json] DEVICE")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadOnly)
	if err != nil {
		return err
	}
	defer v.Close()
	md := v.Metadata()
	if *asJSON {
		return writeJSON(e.stdout, md.Keyslots)
	}
	tokensOf := map[int][]string{}
	for _, t := range md.Tokens {
		for _, k := range t.Keyslots {
			tokensOf[k] = append(tokensOf[k], fmt.Sprintf("%d:%s", t.ID, t.Type))
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPRIORITY\tKDF\tKEY\tTOKENS")
	for _, k := range md.Keyslots {
		kdf := k.KDF.Type
		if k.KDF.Type == luks2.KDFPBKDF2 {
			kdf += "-" + k.KDF.Hash
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d bits\t%s\n", k.ID, k.Priority, kdf, k.KeySize*8, orDash(strings.Join(tokensOf[k.ID], ",")))
	}
	return tw.Flush()
}

func orDash(s string) string { return orNone(s, "-") }

func cmdToken(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usageErrorf("usage: diskcryptd token import|export|remove|list|regen ...")
	}
	sub, args := args[0], args[1:]
	if sub == "regen" {
		return cmdTokenRegen(ctx, e, args)
	}
	f := newFlags(e, "token "+sub, "[--token-id N] [--json-file F] [--key-slot N] DEVICE")
	id := f.Int("token-id", luks2.AnyToken, "token id")
	jsonFile := f.String("json-file", "-", "token JSON file for import (- for stdin)")
	slot := f.Int("key-slot", -1, "for import: bind the token to this keyslot")
	asJSON := f.Bool("json", false, "for list: print JSON")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	mode := luks2.ReadOnly
	if sub == "import" || sub == "remove" {
		mode = luks2.ReadWrite
	}
	v, err := luks2.OpenFile(pos[0], mode)
	if err != nil {
		return err
	}
	defer v.Close()
	switch sub {
	case "import":
		r := e.stdin
		if *jsonFile != "-" {
			fh, err := os.Open(*jsonFile)
			if err != nil {
				return fmt.Errorf("token file: %w", err)
			}
			defer fh.Close()
			r = fh
		}
		raw, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
		if err != nil {
			return fmt.Errorf("reading token: %w", err)
		}
		if *slot >= 0 {
			if raw, err = bindTokenToKeyslot(raw, *slot); err != nil {
				return err
			}
		}
		tid, err := v.AddToken(raw, *id)
		rec := volumeRecord(audit.KindTokenImport, pos[0], v)
		rec.Token = audit.TokenID(tid)
		auditEvent(ctx, e, rec, err)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "token %d imported\n", tid)
		return nil
	case "export":
		if *id < 0 {
			return usageErrorf("which token? pass --token-id N")
		}
		raw, err := v.ExportToken(*id)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(e.stdout, "%s\n", raw)
		return err
	case "remove":
		if *id < 0 {
			return usageErrorf("which token? pass --token-id N")
		}
		err := v.RemoveToken(*id)
		rec := volumeRecord(audit.KindRemove, pos[0], v)
		rec.Token, rec.Detail = audit.TokenID(*id), "token remove"
		auditEvent(ctx, e, rec, err)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "token %d removed\n", *id)
		return nil
	case "list":
		md := v.Metadata()
		if *asJSON {
			return writeJSON(e.stdout, md.Tokens)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TOKEN\tTYPE\tKEYSLOTS")
		for _, t := range md.Tokens {
			line := fmt.Sprintf("%d\t%s\t%s", t.ID, t.Type, orDash(joinInts(t.Keyslots)))
			if raw, err := v.ExportToken(t.ID); err == nil && t.Type == "clevis" {
				line += "\t" + orDash(clevisSummary(raw))
			}
			fmt.Fprintln(tw, line)
		}
		return tw.Flush()
	}
	return usageErrorf("unknown token command %q (import, export, remove, list, regen)", sub)
}

// bindTokenToKeyslot adds slot to the token's "keyslots" array, as cryptsetup token
// import --key-slot does; every other member is kept.
func bindTokenToKeyslot(raw []byte, slot int) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, withCode(exitUsage, "", fmt.Errorf("token is not a JSON object: %w", err))
	}
	var slots []string
	if ks, ok := obj["keyslots"]; ok {
		if err := json.Unmarshal(ks, &slots); err != nil {
			return nil, usageErrorf("token keyslots is not an array of strings")
		}
	}
	s := strconv.Itoa(slot)
	for _, x := range slots {
		if x == s {
			return raw, nil
		}
	}
	slots = append(slots, s)
	ks, _ := json.Marshal(slots)
	obj["keyslots"] = ks
	return json.Marshal(obj)
}
