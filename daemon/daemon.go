package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/systemd"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/hashicorp/go-hclog"
)

// State is where a volume stands.
type State string

// Volume states.
const (
	StateWaiting   State = "waiting"   // its device has not appeared yet
	StateUnlocking State = "unlocking" // tokens are being tried
	StateUnlocked  State = "unlocked"  // mapped by this daemon
	StateActive    State = "active"    // was already mapped when the daemon started
	StateLocked    State = "locked"    // no token opened it; Reason says why
	StateFailed    State = "failed"    // another error (device missing, mapping failed)
)

// VolumeStatus is the state of one configured volume, as the status socket reports it.
type VolumeStatus struct {
	Name   string `json:"name"`
	Device string `json:"device"`
	// Path is the device node the spec resolved to.
	Path  string `json:"path,omitempty"`
	UUID  string `json:"uuid,omitempty"`
	State State  `json:"state"`
	// Reason says why a volume is locked or failed, per token.
	Reason string `json:"reason,omitempty"`
	// Token names the token that opened the volume.
	Token string `json:"token,omitempty"`
	// Seconds is how long the unlock took, from daemon start.
	Seconds float64 `json:"seconds,omitempty"`
}

// Measurer extends a PCR with a volume's measurement after it is mapped.
type Measurer func(ctx context.Context, pcr int, name, uuid string, volumeKey []byte) error

// Daemon unlocks the configured volumes. Create it with its fields set; it holds no
// global state.
type Daemon struct {
	// Config lists the volumes.
	Config *Config
	// Protectors returns the protectors to try for a volume, in order.
	Protectors func(VolumeConfig) []unlock.Protector
	// Measure, if set, measures volumes whose config asks for it.
	Measure Measurer
	// Finder resolves device specs; nil means the real /dev and /sys.
	Finder *blockdev.Finder
	// Notifier talks to systemd; nil means no notifications.
	Notifier *systemd.Notifier
	// Logger receives one line per event; never a secret.
	Logger hclog.Logger
	// Audit records every key release; nil records nothing.
	Audit *audit.Logger

	start time.Time
	mu    sync.Mutex
	state map[string]*VolumeStatus
	// unseal serializes token attempts: a TPM without a resource manager holds only a
	// few sessions, and PIN prompts must not interleave.
	unseal sync.Mutex
}

func (d *Daemon) log() hclog.Logger {
	if d.Logger == nil {
		return hclog.NewNullLogger()
	}
	return d.Logger
}

func (d *Daemon) set(name string, f func(*VolumeStatus)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d.state[name])
}

// Status returns a snapshot of every volume's state, by name.
func (d *Daemon) Status() []VolumeStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]VolumeStatus, 0, len(d.state))
	for _, s := range d.state {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// UnlockAll unlocks every configured volume in parallel and returns their states.
func (d *Daemon) UnlockAll(ctx context.Context) []VolumeStatus {
	d.mu.Lock()
	d.start = time.Now()
	d.state = map[string]*VolumeStatus{}
	for _, vc := range d.Config.Volumes {
		d.state[vc.Name] = &VolumeStatus{Name: vc.Name, Device: vc.Device, State: StateWaiting}
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, vc := range d.Config.Volumes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.unlockOne(ctx, vc)
		}()
	}
	wg.Wait()
	return d.Status()
}

func (d *Daemon) unlockOne(ctx context.Context, vc VolumeConfig) {
	log := d.log().With("volume", vc.Name)
	fail := func(st State, err error) {
		log.Error("volume not unlocked", "state", st, "error", err)
		d.set(vc.Name, func(s *VolumeStatus) { s.State, s.Reason = st, err.Error() })
	}
	if m, err := blockdev.DMStatus(ctx, vc.Name); err == nil {
		log.Info("already mapped", "dm_uuid", m.UUID)
		d.set(vc.Name, func(s *VolumeStatus) { s.State = StateActive })
		return
	}
	finder := d.Finder
	if finder == nil {
		finder = &blockdev.Finder{}
	}
	wctx, cancel := context.WithTimeout(ctx, d.Config.DeviceTimeout)
	path, err := finder.Wait(wctx, vc.Device)
	cancel()
	if err != nil {
		fail(StateFailed, fmt.Errorf("device %s did not appear within %s: %w", vc.Device, d.Config.DeviceTimeout, err))
		return
	}
	d.set(vc.Name, func(s *VolumeStatus) { s.Path, s.State = path, StateUnlocking })
	v, err := luks2.OpenFile(path, luks2.ReadOnly)
	if err != nil {
		fail(StateFailed, err)
		return
	}
	defer v.Close()
	uuid := v.Metadata().UUID
	d.set(vc.Name, func(s *VolumeStatus) { s.UUID = uuid })
	timeout := d.Config.TokenTimeout
	if vc.TokenTimeout > 0 {
		timeout = vc.TokenTimeout
	}
	var prots []unlock.Protector
	if d.Protectors != nil {
		prots = d.Protectors(vc)
	}
	d.unseal.Lock()
	vk, rep, err := RecoverKey(ctx, v, prots, timeout, log)
	EmitReleases(ctx, d.Audit, rep, prots, audit.Record{Actor: "daemon", Volume: vc.Name, Device: path, VolumeUUID: uuid})
	d.unseal.Unlock()
	if err != nil {
		st := StateFailed
		if errors.Is(err, unlock.ErrLocked) {
			st = StateLocked
		}
		fail(st, err)
		return
	}
	defer vk.Wipe()
	if _, err := Map(ctx, v, vk, path, vc.Name, MapOptions{ReadOnly: vc.ReadOnly, Flags: vc.Flags}, log); err != nil {
		fail(StateFailed, err)
		return
	}
	if vc.MeasurePCR >= 0 && d.Measure != nil {
		key := vk.Bytes()
		err := d.Measure(ctx, vc.MeasurePCR, vc.Name, uuid, key)
		clear(key)
		if err != nil {
			log.Error("measuring volume failed", "pcr", vc.MeasurePCR, "error", err)
		}
	}
	w := rep.Winner()
	elapsed := time.Since(d.start)
	d.set(vc.Name, func(s *VolumeStatus) {
		s.State, s.Seconds = StateUnlocked, elapsed.Seconds()
		s.Token = fmt.Sprintf("%d:%s", w.Token.ID, w.Token.Type)
	})
	log.Info("volume unlocked", "token", w.Token.ID, "type", w.Token.Type, "elapsed", elapsed)
}

// Summary is the one-line status for systemd.
func Summary(st []VolumeStatus) string {
	n := 0
	for _, s := range st {
		if s.State == StateUnlocked || s.State == StateActive {
			n++
		}
	}
	return fmt.Sprintf("%d of %d volumes unlocked", n, len(st))
}

// Run unlocks every volume, tells systemd it is ready, and then serves the status
// socket until ctx ends. With once it returns after the unlock pass, with an error
// wrapping unlock.ErrLocked if any volume stayed locked.
func (d *Daemon) Run(ctx context.Context, once bool) error {
	var srv *http.Server
	if !once && d.Config.Socket != "" {
		l, err := listen(d.Config.Socket)
		if err != nil {
			return err
		}
		srv = &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
	}
	st := d.UnlockAll(ctx)
	sum := Summary(st)
	d.log().Info("unlock pass done", "status", sum)
	if d.Notifier != nil {
		if err := d.Notifier.Ready(sum); err != nil {
			d.log().Warn("sd_notify failed", "error", err)
		}
	}
	if once {
		for _, s := range st {
			if s.State != StateUnlocked && s.State != StateActive {
				return fmt.Errorf("%s: %w", sum, unlock.ErrLocked)
			}
		}
		return nil
	}
	if d.Notifier != nil {
		go d.Notifier.Watchdog(ctx)
	}
	<-ctx.Done()
	if d.Notifier != nil {
		d.Notifier.Stopping()
	}
	return nil
}

func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("daemon: socket directory: %w", err)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("daemon: status socket: %w", err)
	}
	// The socket carries state, never secrets: readable by everyone on the host.
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("daemon: status socket: %w", err)
	}
	return l, nil
}

// Handler serves GET /v1/volumes (JSON) and GET /metrics (Prometheus text format).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.Status())
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintln(w, "# HELP diskcryptd_volume_state Volume state (1 for the current state).")
		fmt.Fprintln(w, "# TYPE diskcryptd_volume_state gauge")
		for _, s := range d.Status() {
			for _, st := range []State{StateWaiting, StateUnlocking, StateUnlocked, StateActive, StateLocked, StateFailed} {
				v := 0
				if s.State == st {
					v = 1
				}
				fmt.Fprintf(w, "diskcryptd_volume_state{volume=%q,state=%q} %d\n", s.Name, st, v)
			}
		}
		fmt.Fprintln(w, "# HELP diskcryptd_volume_unlock_seconds Seconds from daemon start to the volume's mapping.")
		fmt.Fprintln(w, "# TYPE diskcryptd_volume_unlock_seconds gauge")
		for _, s := range d.Status() {
			if s.State == StateUnlocked {
				fmt.Fprintf(w, "diskcryptd_volume_unlock_seconds{volume=%q} %g\n", s.Name, s.Seconds)
			}
		}
	})
	return mux
}
