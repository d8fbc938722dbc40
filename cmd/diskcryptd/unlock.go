package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/google/go-tpm/tpm2"
)

// unlockFlags are the activation options, named as cryptsetup and crypttab name them.
type unlockFlags struct {
	test       bool
	keyFile    string
	slot       int
	readOnly   bool
	discards   bool
	noReadWQ   bool
	noWriteWQ  bool
	sameCPU    bool
	timeout    time.Duration
	measurePCR int
	tpm        tpmFlags
	kmip       kmipFlags
	clevis     clevisFlags
}

func cmdUnlock(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "unlock", "[--test] [--key-file F] [--tpm2-device DEV] DEVICE [NAME] | --test DEVICE...")
	var u unlockFlags
	f.BoolVar(&u.test, "test", false, "recover the volume key only; map nothing")
	f.StringVar(&u.keyFile, "key-file", "", "passphrase, key file or recovery key (- for stdin) instead of the tokens")
	f.IntVar(&u.slot, "key-slot", luks2.AnySlot, "with --key-file: the keyslot to try")
	f.BoolVar(&u.readOnly, "readonly", false, "map read-only")
	f.BoolVar(&u.discards, "allow-discards", false, "pass discards (TRIM) to the device")
	f.BoolVar(&u.noReadWQ, "perf-no_read_workqueue", false, "dm-crypt no_read_workqueue")
	f.BoolVar(&u.noWriteWQ, "perf-no_write_workqueue", false, "dm-crypt no_write_workqueue")
	f.BoolVar(&u.sameCPU, "perf-same_cpu_crypt", false, "dm-crypt same_cpu_crypt")
	f.DurationVar(&u.timeout, "token-timeout", 30*time.Second, "deadline for each token")
	f.IntVar(&u.measurePCR, "tpm2-measure-pcr", -1, "after unlocking, measure the volume into this PCR (systemd uses 15)")
	u.tpm.register(f, false)
	u.clevis.register(f)
	u.kmip.register(f, false)
	pos, err := f.parse(args, 1, -1)
	if err != nil {
		return err
	}
	if u.test && len(pos) > 1 {
		return unlockTestMany(ctx, e, pos, &u)
	}
	if len(pos) > 2 {
		return usageErrorf("several devices only with --test: diskcryptd unlock --test DEVICE...")
	}
	if !u.test && len(pos) != 2 {
		return usageErrorf("a mapping name is needed: diskcryptd unlock DEVICE NAME (or --test)")
	}
	// The header is read from, and the mapping made on, this one descriptor.
	dev, err := blockdev.Open(pos[0], blockdev.OpenOptions{})
	if err != nil {
		return err
	}
	defer dev.Close()
	v, err := luks2.OpenDevice(dev, dev.Size(), luks2.ReadOnly)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	vk, how, err := recoverKey(ctx, e, v, &u)
	if err != nil {
		return err
	}
	defer vk.Wipe()
	if u.test {
		fmt.Fprintf(e.stdout, "volume key recovered through %s\n", how)
		return nil
	}
	return activate(ctx, e, v, vk, dev, pos[1], &u)
}

// recoverKey recovers the volume key with --key-file, or through the volume's tokens.
// It says how in a line for the operator.
func recoverKey(ctx context.Context, e *env, v *luks2.Volume, u *unlockFlags) (*luks2.VolumeKey, string, error) {
	if u.keyFile != "" {
		key, err := readKeyFile(e, u.keyFile)
		if err != nil {
			return nil, "", err
		}
		defer clear(key)
		vk, slot, err := unlockWithKey(ctx, v, key, u.slot)
		rec := volumeRecord(audit.KindKeyRelease, "", v)
		rec.Protector = "key-file"
		if err == nil {
			rec.Keyslots = []int{slot}
		}
		auditEvent(ctx, e, rec, err)
		if err != nil {
			return nil, "", err
		}
		return vk, fmt.Sprintf("key file (keyslot %d)", slot), nil
	}
	prots, err := u.protectors(e)
	if err != nil {
		return nil, "", err
	}
	vk, rep, err := daemon.RecoverKey(ctx, v, prots, u.timeout, e.log)
	daemon.EmitReleases(ctx, auditLogger(e), rep, prots, volumeRecord(audit.KindKeyRelease, "", v))
	if err != nil {
		return nil, "", err
	}
	w := rep.Winner()
	return vk, fmt.Sprintf("token %d (%s, %s)", w.Token.ID, w.Token.Type, w.Protector), nil
}

// protectors are the protectors that try a volume's tokens: clevis (Tang, TPM2,
// sss), the TPM2 (systemd-tpm2 tokens) and KMIP.
func (u *unlockFlags) protectors(e *env) ([]unlock.Protector, error) {
	p, err := u.tpm.protector(e, false)
	if err != nil {
		return nil, err
	}
	cp, err := u.clevis.protector(e, u.tpm.device)
	if err != nil {
		return nil, err
	}
	u.kmip.tpmDevice = u.tpm.device
	kp, err := u.kmip.unlockProtector(e)
	if err != nil {
		return nil, err
	}
	return []unlock.Protector{cp, auditedTPM{p, u.tpm.device}, kp}, nil
}

// activate maps the volume with device-mapper, loading the table cryptsetup would load.
func activate(ctx context.Context, e *env, v *luks2.Volume, vk *luks2.VolumeKey, dev *blockdev.Device, name string, u *unlockFlags) error {
	var flags blockdev.CryptFlags
	if u.discards {
		flags |= blockdev.AllowDiscards
	}
	if u.noReadWQ {
		flags |= blockdev.NoReadWorkqueue
	}
	if u.noWriteWQ {
		flags |= blockdev.NoWriteWorkqueue
	}
	if u.sameCPU {
		flags |= blockdev.SameCPUCrypt
	}
	m, err := daemon.MapDevice(ctx, v, vk, dev, name, daemon.MapOptions{ReadOnly: u.readOnly, Flags: flags}, e.log)
	if err != nil {
		return err
	}
	if u.measurePCR >= 0 {
		key := vk.Bytes()
		err := measure(ctx, u.tpm.device, u.measurePCR, name, v.Metadata().UUID, key)
		clear(key)
		if err != nil {
			return fmt.Errorf("volume mapped at %s, but measuring it into PCR %d failed: %w", m.Node, u.measurePCR, err)
		}
	}
	fmt.Fprintf(e.stdout, "%s unlocked at %s\n", dev.Path(), m.Node)
	return nil
}

// measure extends pcr with the volume's measurement, as systemd's tpm2-measure-pcr.
func measure(ctx context.Context, device string, pcr int, name, uuid string, key []byte) error {
	t, err := tpm.Open(device)
	if err != nil {
		return err
	}
	defer t.Close()
	return tpm.MeasureVolume(ctx, t, pcr, nil, name, uuid, key)
}

func cmdLock(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "lock", "NAME")
	deferred := f.Bool("deferred", false, "remove when the last user closes it")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if err := blockdev.DMRemove(ctx, pos[0], blockdev.RemoveOptions{Deferred: *deferred}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s locked\n", pos[0])
	return nil
}

// volumeStatus is one line of diskcryptd status.
type volumeStatus struct {
	Name     string `json:"name"`
	UUID     string `json:"dm_uuid"`
	Device   string `json:"device"`
	Cipher   string `json:"cipher"`
	Sectors  uint64 `json:"size_sectors"`
	ReadOnly bool   `json:"read_only"`
	InUse    int    `json:"open_count"`
}

// statusReport is what status --json prints.
type statusReport struct {
	Mapped []volumeStatus `json:"mapped"`
	// Daemon is the running daemon's view of its configured volumes, if one answers.
	Daemon []daemon.VolumeStatus `json:"daemon,omitempty"`
}

func cmdStatus(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "status", "[--json] [--socket PATH]")
	asJSON := f.Bool("json", false, "print JSON")
	socket := f.String("socket", daemon.DefaultSocket, "the daemon's status socket")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	rep := statusReport{Mapped: []volumeStatus{}}
	rep.Daemon, _ = daemonStatus(ctx, e.stderr, *socket)
	maps, err := blockdev.DMList(ctx)
	if err != nil && rep.Daemon == nil {
		return err
	}
	for _, m := range maps {
		if !m.IsCrypt() || !strings.HasPrefix(m.UUID, "CRYPT-") {
			continue
		}
		s := volumeStatus{Name: m.Name, UUID: m.UUID, ReadOnly: m.ReadOnly, InUse: m.OpenCount, Sectors: m.Targets[0].Length}
		if p, err := blockdev.ParseCryptParams(m.Targets[0].Params); err == nil {
			s.Cipher, s.Device = p.Cipher, p.Device
		}
		rep.Mapped = append(rep.Mapped, s)
	}
	if *asJSON {
		return writeJSON(e.stdout, rep)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDEVICE\tCIPHER\tSIZE\tMODE\tOPEN")
	for _, s := range rep.Mapped {
		mode := "rw"
		if s.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%s\t%d\n", s.Name, s.Device, s.Cipher, s.Sectors/2048, mode, s.InUse)
	}
	if rep.Daemon != nil {
		fmt.Fprintln(tw, "\nDAEMON VOLUME\tSTATE\tTOKEN\tREASON")
		for _, s := range rep.Daemon {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.State, orDash(s.Token), orDash(statusNote(s)))
		}
	}
	return tw.Flush()
}

func cmdPCR(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "read" && args[0] != "extend") {
		return usageErrorf("usage: diskcryptd pcr read [--tpm2-pcr-bank B] PCRS | pcr extend --pcr N --data TEXT")
	}
	sub := args[0]
	f := newFlags(e, "pcr "+sub, "[--tpm2-device DEV] ...")
	device := f.String("tpm2-device", "", "TPM: /dev/tpmrm0 (default) or swtpm:path=SOCKET")
	bankName := f.String("tpm2-pcr-bank", "sha256", "PCR bank")
	pcr := f.Int("pcr", -1, "for extend: the PCR")
	data := f.String("data", "", "for extend: the text to measure (not a secret)")
	pos, err := f.parse(args[1:], 0, 1)
	if err != nil {
		return err
	}
	bank, err := tpm.ParseBank(*bankName)
	if err != nil {
		return withCode(exitUsage, "", err)
	}
	t, err := tpm.Open(*device)
	if err != nil {
		return withCode(exitDevice, "", err)
	}
	defer t.Close()
	if sub == "extend" {
		if *pcr < 0 {
			return usageErrorf("which PCR? pass --pcr N")
		}
		if err := tpm.Extend(ctx, t, *pcr, []tpm2.TPMIAlgHash{bank}, []byte(*data)); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "PCR %d extended\n", *pcr)
		return nil
	}
	spec := "0+1+2+3+4+5+6+7"
	if len(pos) == 1 {
		spec = pos[0]
	}
	pcrs, _, err := tpm.ParsePCRs(spec)
	if err != nil {
		return withCode(exitUsage, "", err)
	}
	vals, err := tpm.ReadPCRs(ctx, t, bank, pcrs)
	if err != nil {
		return err
	}
	for _, p := range pcrs {
		fmt.Fprintf(e.stdout, "%s:%d %x\n", *bankName, p, vals[p])
	}
	return nil
}

func cmdVersion(_ context.Context, e *env, _ []string) error {
	fmt.Fprintf(e.stdout, "diskcryptd %s\n", version)
	return nil
}
