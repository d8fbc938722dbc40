package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/diskcryptd/diskcryptd/blockdev"
)

// Hot-plug: after the boot pass, `serve` keeps reading kernel uevents (Daemon.Uevents).
//
//   - A block device appearing ("add", "change") makes the daemon look again for every
//     volume that is waiting for its device; one that is found is unlocked.
//   - A block device disappearing ("remove") is checked against every volume: a volume
//     whose disk is gone goes back to waiting (and says whether its mapping is still
//     there, to be locked by hand), and a volume whose mapping is gone (diskcryptd lock,
//     cryptsetup close) becomes locked and is not unlocked again by itself.
//   - Reload (SIGHUP) swaps the configuration and retries every volume not unlocked.

// statusChanged tells systemd the new one-line status while hot-plug is on.
func (d *Daemon) statusChanged() {
	d.mu.Lock()
	hotplug := d.hotplug
	d.mu.Unlock()
	if hotplug && d.Notifier != nil {
		if err := d.Notifier.Status(Summary(d.Status())); err != nil {
			d.log().Warn("sd_notify failed", "error", err)
		}
	}
}

// watch reads uevents until ctx ends.
func (d *Daemon) watch(ctx context.Context) {
	d.rescan(ctx) // anything that appeared while the boot pass ran
	for {
		u, err := d.Uevents.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log().Error("reading uevents failed", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if u.Subsystem != "block" {
			continue
		}
		d.log().Debug("uevent", "action", u.Action, "devpath", u.DevPath, "devname", u.DevName)
		switch u.Action {
		case "add", "change":
			d.rescan(ctx)
		case "remove":
			d.removed(ctx, u)
		}
	}
}

// rescan tries every waiting volume once (no wait for its device).
func (d *Daemon) rescan(ctx context.Context) {
	for _, vc := range d.volumesIn(StateWaiting) {
		d.trigger(ctx, vc, 0, nil)
	}
}

// volumesIn returns the configured volumes currently in one of the states.
func (d *Daemon) volumesIn(states ...State) []VolumeConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []VolumeConfig
	for _, vc := range d.Config.Volumes {
		s := d.state[vc.Name]
		if s == nil || d.busy[vc.Name] {
			continue
		}
		for _, st := range states {
			if s.State == st {
				out = append(out, vc)
				break
			}
		}
	}
	return out
}

// removed updates the volumes a block device removal concerns.
func (d *Daemon) removed(ctx context.Context, u *Uevent) {
	for _, vc := range d.volumesIn(StateUnlocked, StateActive) {
		d.mu.Lock()
		disk, hasDisk := d.devs[vc.Name]
		d.mu.Unlock()
		_, err := d.dm().Table(ctx, vc.Name)
		mapped := err == nil || !errors.Is(err, blockdev.ErrMappingNotFound)
		switch {
		case u.HasDevNum && hasDisk && u.DevNum() == disk:
			reason := fmt.Sprintf("device %s removed; it is unlocked again when it appears", u.DevName)
			if mapped {
				reason = fmt.Sprintf("device %s removed while /dev/mapper/%s still maps it: run diskcryptd lock %s", u.DevName, vc.Name, vc.Name)
			}
			d.log().Warn("volume's device removed", "volume", vc.Name, "device", u.DevName, "still_mapped", mapped)
			d.set(vc.Name, func(s *VolumeStatus) { s.State, s.Reason = StateWaiting, reason })
		case !mapped:
			d.log().Info("volume's mapping removed", "volume", vc.Name)
			d.set(vc.Name, func(s *VolumeStatus) {
				s.State, s.Reason = StateLocked, "mapping removed (diskcryptd lock or cryptsetup close); diskcryptd unlock or SIGHUP to unlock again"
			})
		default:
			continue
		}
		d.statusChanged()
	}
}

// Reload replaces the configuration (SIGHUP): new volumes are added, removed ones are
// forgotten (their mappings stay), and every volume that is not unlocked or active is
// tried again. The socket and TPM settings of the new configuration take effect only
// at the next start.
func (d *Daemon) Reload(ctx context.Context, cfg *Config) {
	d.mu.Lock()
	if d.state == nil {
		// Before the boot pass: it will use the new configuration.
		cfg.Socket = d.Config.Socket
		d.Config = cfg
		d.mu.Unlock()
		return
	}
	keep := map[string]bool{}
	for _, vc := range cfg.Volumes {
		keep[vc.Name] = true
		s := d.state[vc.Name]
		if s == nil {
			d.state[vc.Name] = &VolumeStatus{Name: vc.Name, Device: vc.Device, State: StateWaiting}
			continue
		}
		s.Device = vc.Device
		if s.State != StateUnlocked && s.State != StateActive && !d.busy[vc.Name] {
			s.State, s.Reason = StateWaiting, "configuration reloaded"
		}
	}
	for name := range d.state {
		if !keep[name] {
			delete(d.state, name)
			delete(d.devs, name)
			delete(d.dmDevs, name)
		}
	}
	cfg.Socket = d.Config.Socket
	d.Config = cfg
	d.mu.Unlock()
	d.log().Info("configuration reloaded", "volumes", len(cfg.Volumes))
	d.rescan(ctx)
	d.statusChanged()
}
