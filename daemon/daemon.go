package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/blockdev"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/reseal"
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
	// Started is when the daemon began unlocking the volume (its device found), in
	// seconds from daemon start; with Seconds it bounds the volume's unlock.
	Started float64 `json:"started,omitempty"`
	// KeyslotStart and KeyslotEnd bound the keyslot attempt (the KDF) that opened
	// the volume, in seconds from daemon start: volumes unlock in parallel when
	// these intervals overlap.
	KeyslotStart float64 `json:"keyslot_start,omitempty"`
	KeyslotEnd   float64 `json:"keyslot_end,omitempty"`
	// Reseal says what the last reseal of a stale TPM2 token did, or why it failed.
	Reseal string `json:"reseal,omitempty"`
	// Reseals and ResealFailures count reseals done and failed since start.
	Reseals        int `json:"reseals,omitempty"`
	ResealFailures int `json:"reseal_failures,omitempty"`
}

// ErrDuplicateUUID is the reason a volume stays locked when more than one device
// carries its LUKS UUID: the daemon cannot tell the real disk from a clone.
var ErrDuplicateUUID = errors.New("daemon: more than one device carries this LUKS UUID")

// ErrForeignMapping is the reason a volume is not reported active when a mapping of its
// name exists but belongs to another volume or device.
var ErrForeignMapping = errors.New("daemon: a mapping of this name exists for another volume")

// Measurer extends a PCR with a volume's measurement after it is mapped.
type Measurer func(ctx context.Context, pcr int, name, uuid string, volumeKey []byte) error

// Daemon unlocks the configured volumes. Create it with its fields set; it holds no
// global state.
type Daemon struct {
	// Config lists the volumes.
	Config *Config
	// Protectors returns the protectors to try for a volume, in order.
	Protectors func(VolumeConfig) []unlock.Protector
	// Measure, if set, measures volumes whose config asks for it (by default all, into
	// PCR 15). Leave it nil where there is no TPM.
	Measure Measurer
	// Finder resolves device specs; nil means the real /dev and /sys.
	Finder *blockdev.Finder
	// DM is device-mapper; nil means the kernel's (KernelDM).
	DM DeviceMapper
	// SocketGroup is the group that may read the status socket, if it exists
	// ("diskcryptd" when empty).
	SocketGroup string
	// Uevents, when set, keeps Run (without once) watching the kernel's block device
	// events after the boot pass: a configured volume whose device appears later is
	// unlocked, and a removed device or mapping updates the status (see hotplug.go).
	Uevents UeventSource
	// Notifier talks to systemd; nil means no notifications.
	Notifier *systemd.Notifier
	// Logger receives one line per event; never a secret.
	Logger hclog.Logger
	// Audit records every key release; nil records nothing.
	Audit *audit.Logger
	// Reseal reseals stale TPM2 tokens of volumes configured with reseal=tpm2; nil
	// never reseals.
	Reseal *reseal.Resealer
	// Metrics are written after the daemon's own on GET /metrics (a protector's
	// counters, e.g. diskcryptd_kms_requests_total).
	Metrics []io.WriterTo

	start time.Time
	mu    sync.Mutex
	state map[string]*VolumeStatus
	// unseal serializes protectors' Unseal calls: a TPM without a resource manager
	// holds only a few sessions, and PIN prompts must not interleave. Keyslot KDFs run
	// outside it, in parallel across volumes.
	unseal sync.Mutex
	// afterHeader, when set (tests), runs after a volume's header was read.
	afterHeader func(VolumeConfig)
	// hotplug is set while Run watches uevents: a missing device leaves its volume
	// waiting instead of failed.
	hotplug bool
	// busy names the volumes with an unlock in flight; devs and dmDevs are the device
	// numbers of each volume's disk and mapping (all under mu).
	busy         map[string]bool
	devs, dmDevs map[string]uint64
}

// ConcurrentProtector is implemented by protectors whose Unseal may run for several
// volumes at once (network protectors with a connection per call, such as KMIP): the
// daemon does not serialize them under its unseal lock.
type ConcurrentProtector interface {
	ConcurrentUnseal() bool
}

// serialProtector runs a protector's Unseal under the daemon's unseal lock.
type serialProtector struct {
	unlock.Protector
	mu *sync.Mutex
}

func (p serialProtector) Unseal(ctx context.Context, tok unlock.Token) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Protector.Unseal(ctx, tok)
}

func (d *Daemon) dm() DeviceMapper {
	if d.DM == nil {
		return KernelDM{}
	}
	return d.DM
}

func (d *Daemon) finder() *blockdev.Finder {
	if d.Finder == nil {
		return &blockdev.Finder{}
	}
	return d.Finder
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
	if s := d.state[name]; s != nil { // nil: removed by Reload meanwhile
		f(s)
	}
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
	d.busy, d.devs, d.dmDevs = map[string]bool{}, map[string]uint64{}, map[string]uint64{}
	for _, vc := range d.Config.Volumes {
		d.state[vc.Name] = &VolumeStatus{Name: vc.Name, Device: vc.Device, State: StateWaiting}
	}
	vols, wait := d.Config.Volumes, d.Config.DeviceTimeout
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, vc := range vols {
		d.trigger(ctx, vc, wait, &wg)
	}
	wg.Wait()
	return d.Status()
}

// trigger starts unlocking vc, waiting up to wait for its device, unless an unlock of
// that volume is already in flight. wg, if set, is done when it ends.
func (d *Daemon) trigger(ctx context.Context, vc VolumeConfig, wait time.Duration, wg *sync.WaitGroup) {
	d.mu.Lock()
	if d.busy[vc.Name] {
		d.mu.Unlock()
		return
	}
	d.busy[vc.Name] = true
	d.mu.Unlock()
	if wg != nil {
		wg.Add(1)
	}
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.busy, vc.Name)
			d.mu.Unlock()
			if wg != nil {
				wg.Done()
			}
		}()
		d.unlockOne(ctx, vc, wait)
		d.statusChanged()
	}()
}

// config returns the current configuration (Reload replaces it).
func (d *Daemon) config() *Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.Config
}

func (d *Daemon) unlockOne(ctx context.Context, vc VolumeConfig, wait time.Duration) {
	log := d.log().With("volume", vc.Name)
	cfg := d.config()
	fail := func(st State, err error) {
		log.Error("volume not unlocked", "state", st, "error", err)
		d.set(vc.Name, func(s *VolumeStatus) { s.State, s.Reason = st, err.Error() })
	}
	var path string
	var err error
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		path, err = d.finder().Wait(wctx, vc.Device)
		cancel()
	} else {
		path, err = d.finder().Find(vc.Device)
	}
	if err != nil {
		d.mu.Lock()
		hotplug := d.hotplug
		d.mu.Unlock()
		if hotplug {
			log.Info("device not present; waiting for it", "device", vc.Device)
			d.set(vc.Name, func(s *VolumeStatus) {
				s.State, s.Reason = StateWaiting, fmt.Sprintf("device %s not present; it is unlocked when it appears", vc.Device)
			})
			return
		}
		fail(StateFailed, fmt.Errorf("device %s did not appear within %s: %w", vc.Device, wait, err))
		return
	}
	started := time.Since(d.start).Seconds()
	d.set(vc.Name, func(s *VolumeStatus) { s.Path, s.State, s.Reason, s.Started = path, StateUnlocking, "", started })
	// One descriptor for everything: the header is read from it, and the mapping names
	// its device number, so a path that changes meanwhile cannot swap the device.
	dev, err := blockdev.Open(path, blockdev.OpenOptions{})
	if err != nil {
		fail(StateFailed, err)
		return
	}
	defer dev.Close()
	v, err := luks2.OpenDevice(dev, dev.Size(), luks2.ReadOnly)
	if err != nil {
		fail(StateFailed, fmt.Errorf("%s: %w", path, err))
		return
	}
	uuid := v.Metadata().UUID
	d.set(vc.Name, func(s *VolumeStatus) { s.UUID = uuid })
	if d.afterHeader != nil {
		d.afterHeader(vc)
	}
	if others, err := d.finder().FindAllByLUKSUUID(uuid); err == nil {
		var clones []string
		for _, o := range others {
			if !dev.SameDevice(o) {
				clones = append(clones, o)
			}
		}
		if len(clones) > 0 {
			fail(StateLocked, fmt.Errorf("%w: %s and %s; remove the clone or give it a new UUID (cryptsetup luksUUID --uuid)", ErrDuplicateUUID, path, strings.Join(clones, ", ")))
			return
		}
	}
	d.mu.Lock()
	d.devs[vc.Name] = dev.DevNum()
	d.mu.Unlock()
	if active, err := d.checkExisting(ctx, vc.Name, uuid, dev); err != nil {
		fail(StateFailed, err)
		return
	} else if active {
		log.Info("already mapped")
		d.set(vc.Name, func(s *VolumeStatus) { s.State = StateActive })
		return
	}
	timeout := cfg.TokenTimeout
	if vc.TokenTimeout > 0 {
		timeout = vc.TokenTimeout
	}
	var prots, serial []unlock.Protector
	if d.Protectors != nil {
		prots = d.Protectors(vc)
		for _, p := range prots {
			if c, ok := p.(ConcurrentProtector); ok && c.ConcurrentUnseal() {
				serial = append(serial, p)
				continue
			}
			serial = append(serial, serialProtector{Protector: p, mu: &d.unseal})
		}
	}
	var ksStart, ksEnd time.Time
	rec, err := d.recoverWithFallback(ctx, v, vc, prots, serial, timeout, log, path, func(s, e time.Time) { ksStart, ksEnd = s, e })
	if err != nil {
		st := StateFailed
		if errors.Is(err, unlock.ErrLocked) {
			st = StateLocked
		}
		fail(st, err)
		return
	}
	vk := rec.vk
	defer vk.Wipe()
	defer d.resealAfter(ctx, vc, path, rec) // after the mapping, before the wipe
	m, err := MapDevice(ctx, v, vk, dev, vc.Name, MapOptions{ReadOnly: vc.ReadOnly, Flags: vc.Flags, DM: d.dm()}, log)
	if err != nil {
		fail(StateFailed, err)
		return
	}
	d.mu.Lock()
	d.dmDevs[vc.Name] = m.Dev
	d.mu.Unlock()
	if vc.MeasurePCR >= 0 && d.Measure != nil {
		key := vk.Bytes()
		d.unseal.Lock()
		err := d.Measure(ctx, vc.MeasurePCR, vc.Name, uuid, key)
		d.unseal.Unlock()
		clear(key)
		if err != nil {
			log.Error("measuring volume failed", "pcr", vc.MeasurePCR, "error", err)
		}
	}
	elapsed := time.Since(d.start)
	d.set(vc.Name, func(s *VolumeStatus) {
		s.State, s.Seconds = StateUnlocked, elapsed.Seconds()
		s.KeyslotStart, s.KeyslotEnd = ksStart.Sub(d.start).Seconds(), ksEnd.Sub(d.start).Seconds()
		s.Token = rec.how
	})
	protector := "key-file"
	if rec.rep != nil {
		if w := rec.rep.Winner(); w != nil {
			protector = w.Protector
		}
	}
	log.Info("volume unlocked", "token", rec.how, "protector", protector, "elapsed", elapsed)
}

// checkExisting reports whether the mapping name already exists for this volume on
// this device (then the volume is active). A mapping of that name with another dm UUID
// (CRYPT-LUKS2-<uuid>-<name>, as cryptsetup names it) or on another device is an
// error matching ErrForeignMapping; no mapping is (false, nil).
func (d *Daemon) checkExisting(ctx context.Context, name, uuid string, dev *blockdev.Device) (bool, error) {
	m, err := d.dm().Table(ctx, name)
	if err != nil {
		// Not mapped (or no device-mapper: creating the mapping will say so).
		return false, nil
	}
	want, err := blockdev.DMUUID(uuid, name)
	if err != nil {
		return false, err
	}
	if m.UUID != want {
		return false, fmt.Errorf("%w: /dev/mapper/%s has dm UUID %q, this volume's is %q; lock it (diskcryptd lock %s) or rename the volume", ErrForeignMapping, name, m.UUID, want, name)
	}
	if dev.IsBlockDevice() && m.IsCrypt() && m.Targets[0].Crypt != nil {
		if got, ours := m.Targets[0].Crypt.Device, blockdev.DevNumString(dev.DevNum()); got != ours {
			return false, fmt.Errorf("%w: /dev/mapper/%s maps device %s, this volume is on %s", ErrForeignMapping, name, got, ours)
		}
	}
	return true, nil
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
		group := d.SocketGroup
		if group == "" {
			group = DefaultSocketGroup
		}
		l, err := listen(d.Config.Socket, group)
		if err != nil {
			return err
		}
		srv = &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		// Close the listener here too: Serve may not have started tracking it yet.
		defer l.Close()
		defer srv.Close()
	}
	if !once && d.Uevents != nil {
		d.mu.Lock()
		d.hotplug = true
		d.mu.Unlock()
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
	if d.Uevents != nil {
		go d.watch(ctx)
	}
	<-ctx.Done()
	if d.Notifier != nil {
		d.Notifier.Stopping()
	}
	return nil
}

// DefaultSocketGroup is the group allowed to read the status socket when it exists.
const DefaultSocketGroup = "diskcryptd"

// listen creates the status socket at path, mode 0660, owned by the daemon's user
// (root) and by group (when that group exists; otherwise the daemon's group): only
// root and members of the group may read the volumes' states. The socket is bound in
// a private directory and renamed into place, so it is never reachable with looser
// permissions.
func listen(path, group string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("daemon: socket directory: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".sock-")
	if err != nil {
		return nil, fmt.Errorf("daemon: socket directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	staged := filepath.Join(tmp, "s")
	l, err := net.Listen("unix", staged)
	if err != nil {
		return nil, fmt.Errorf("daemon: status socket: %w", err)
	}
	// net.UnixListener removes its path on Close; after the rename that is path.
	ok := false
	defer func() {
		if !ok {
			l.Close()
		}
	}()
	if err := os.Chmod(staged, 0o660); err != nil {
		return nil, fmt.Errorf("daemon: status socket: %w", err)
	}
	if g, err := user.LookupGroup(group); err == nil {
		gid, err := strconv.Atoi(g.Gid)
		if err == nil {
			err = os.Chown(staged, -1, gid)
		}
		if err != nil {
			return nil, fmt.Errorf("daemon: status socket group %s: %w", group, err)
		}
	}
	os.Remove(path)
	if err := os.Rename(staged, path); err != nil {
		return nil, fmt.Errorf("daemon: status socket: %w", err)
	}
	if ul, isUnix := l.(*net.UnixListener); isUnix {
		// Unlink the final path on Close, not the staged one.
		ul.SetUnlinkOnClose(false)
		ok = true
		return &unlinkListener{Listener: l, path: path}, nil
	}
	ok = true
	return l, nil
}

// unlinkListener removes the socket file when closed.
type unlinkListener struct {
	net.Listener
	path string
}

func (u *unlinkListener) Close() error {
	err := u.Listener.Close()
	os.Remove(u.path)
	return err
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
		writeResealMetrics(w, d.Status())
		for _, m := range d.Metrics {
			m.WriteTo(w)
		}
	})
	return mux
}
