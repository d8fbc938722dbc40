package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/reseal"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/hashicorp/go-hclog"
)

// recovered is how a volume's key was recovered.
type recovered struct {
	vk  *luks2.VolumeKey
	rep *unlock.Report
	// how names the route: "ID:TYPE" of the winning token, or "key-file".
	how string
	// opened are the keyslots that opened the volume (never resealed away).
	opened []int
	// resealKey is a copy of the volume key kept for the reseal (volumes with
	// reseal=tpm2 only): the mapping and the measurement may wipe vk first.
	// resealAfter wipes it.
	resealKey *luks2.VolumeKey
}

// keepForReseal copies the volume key for resealAfter when the volume may need it.
func (d *Daemon) keepForReseal(vc VolumeConfig, r *recovered) *recovered {
	if vc.ResealTPM2 && d.Reseal != nil {
		r.resealKey = luks2.NewVolumeKey(r.vk.Bytes())
	}
	return r
}

// recoverWithFallback recovers v's key through its tokens (with serial, the
// protectors prots under the daemon's unseal lock) and, when none opens it and the
// volume has a key-file configured, through that file (an authorized fallback).
// Every attempt is audited.
func (d *Daemon) recoverWithFallback(ctx context.Context, v *luks2.Volume, vc VolumeConfig, prots, serial []unlock.Protector, timeout time.Duration, log hclog.Logger, path string, onKeyslot func(start, end time.Time)) (*recovered, error) {
	base := audit.Record{Actor: "daemon", Volume: vc.Name, Device: path, VolumeUUID: v.Metadata().UUID}
	vk, rep, err := recoverKey(ctx, v, serial, timeout, log, onKeyslot)
	// Protectors describe their releases with the TPM or network still theirs.
	d.unseal.Lock()
	EmitReleases(ctx, d.Audit, rep, prots, base)
	d.unseal.Unlock()
	if err == nil {
		w := rep.Winner()
		return d.keepForReseal(vc, &recovered{vk: vk, rep: rep, how: fmt.Sprintf("%d:%s", w.Token.ID, w.Token.Type), opened: w.Token.Keyslots}), nil
	}
	if vc.KeyFile == "" || !errors.Is(err, unlock.ErrLocked) {
		return nil, err
	}
	start := time.Now()
	vk, slot, kerr := unlockWithKeyFile(ctx, v, vc.KeyFile)
	if onKeyslot != nil {
		onKeyslot(start, time.Now())
	}
	rec := base
	rec.Kind, rec.Protector, rec.Detail = audit.KindKeyRelease, "key-file", "configured key file "+vc.KeyFile
	if kerr != nil {
		rec.Result, rec.Error = audit.Failure, kerr.Error()
		d.Audit.Emit(ctx, rec)
		return nil, fmt.Errorf("%w; key file %s: %w", err, vc.KeyFile, kerr)
	}
	rec.Keyslots = []int{slot}
	d.Audit.Emit(ctx, rec)
	log.Warn("volume opened through its configured key file", "keyslot", slot)
	return d.keepForReseal(vc, &recovered{vk: vk, rep: rep, how: "key-file", opened: []int{slot}}), nil
}

// ErrKeyFileMode is returned for a key file that others than its owner may read.
var ErrKeyFileMode = errors.New("daemon: key file is readable by group or others; chmod 0600 it")

// unlockWithKeyFile opens v with the whole content of path (cryptsetup semantics).
func unlockWithKeyFile(ctx context.Context, v *luks2.Volume, path string) (*luks2.VolumeKey, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, -1, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, -1, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, -1, fmt.Errorf("%w: %s is %o", ErrKeyFileMode, path, fi.Mode().Perm())
	}
	key, err := luks2.ReadKeyFile(f)
	if err != nil {
		return nil, -1, err
	}
	defer clear(key)
	return v.Unlock(ctx, key)
}

// resealAfter reseals the volume's stale TPM2 tokens when its configuration asks
// for it (reseal=tpm2) and the key came through another, authorized route. It runs
// after the mapping, so a reseal never delays a volume; its outcome is in the
// volume's status and metrics and in the audit log.
func (d *Daemon) resealAfter(ctx context.Context, vc VolumeConfig, path string, r *recovered) {
	defer r.resealKey.Wipe()
	if !vc.ResealTPM2 || d.Reseal == nil || r.resealKey == nil {
		return
	}
	log := d.log().With("volume", vc.Name)
	v, err := luks2.OpenFile(path, luks2.ReadOnly)
	if err != nil {
		log.Error("reseal: reopening the volume", "error", err)
		return
	}
	stale, ferr := reseal.FindStale(v.Metadata(), r.rep, r.opened)
	v.Close()
	if errors.Is(ferr, reseal.ErrNothingStale) {
		return
	}
	if len(stale) == 0 {
		d.resealed(vc.Name, "", ferr)
		return
	}
	d.unseal.Lock()
	defer d.unseal.Unlock()
	rw, err := luks2.OpenFile(path, luks2.ReadWrite)
	if err != nil {
		d.resealed(vc.Name, "", err)
		return
	}
	defer rw.Close()
	done, err := d.Reseal.Reseal(ctx, rw, r.resealKey, stale, audit.Record{Actor: "daemon", Volume: vc.Name, Device: path})
	msg := ""
	for i, res := range done {
		if i > 0 {
			msg += "; "
		}
		msg += res.String()
	}
	d.resealed(vc.Name, msg, errors.Join(ferr, err))
}

// resealed records a reseal's outcome in the volume's status.
func (d *Daemon) resealed(name, msg string, err error) {
	d.set(name, func(s *VolumeStatus) {
		if msg != "" {
			s.Reseal = "resealed: " + msg
			s.Reseals++
		}
		if err != nil {
			s.Reseal = joinNonEmpty(s.Reseal, "reseal failed: "+err.Error())
			s.ResealFailures++
		}
	})
}

func joinNonEmpty(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// writeResealMetrics writes the reseal counters of every volume.
func writeResealMetrics(w io.Writer, st []VolumeStatus) {
	fmt.Fprintln(w, "# HELP diskcryptd_volume_reseals_total TPM2 protectors resealed to new PCR values after an authorized fallback.")
	fmt.Fprintln(w, "# TYPE diskcryptd_volume_reseals_total counter")
	for _, s := range st {
		fmt.Fprintf(w, "diskcryptd_volume_reseals_total{volume=%q} %d\n", s.Name, s.Reseals)
	}
	fmt.Fprintln(w, "# HELP diskcryptd_volume_reseal_failures_total Reseals that failed or were refused.")
	fmt.Fprintln(w, "# TYPE diskcryptd_volume_reseal_failures_total counter")
	for _, s := range st {
		fmt.Fprintf(w, "diskcryptd_volume_reseal_failures_total{volume=%q} %d\n", s.Name, s.ResealFailures)
	}
}
