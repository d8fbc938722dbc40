package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/systemd"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// defaultConfig is where serve reads its configuration.
const defaultConfig = "/etc/diskcryptd/diskcryptd.conf"

func cmdServe(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "serve", "[--config FILE] [--once]")
	cfgPath := f.String("config", defaultConfig, "configuration file")
	once := f.Bool("once", false, "unlock every volume and exit (initramfs); exit 2 if any stays locked")
	tpmDevice := f.String("tpm2-device", "", "TPM, overriding the configuration's tpm2-device")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	fh, err := os.Open(*cfgPath)
	if err != nil {
		return withCode(exitUsage, "write a configuration: see contrib/diskcryptd.conf.example", err)
	}
	cfg, err := daemon.ParseConfig(fh)
	fh.Close()
	if err != nil {
		return withCode(exitUsage, "", err)
	}
	if *tpmDevice != "" {
		cfg.TPMDevice = *tpmDevice
	}
	tf := tpmFlags{device: cfg.TPMDevice, sig: tpmSigFlags{signature: cfg.TPMSignature}}
	prot, err := tf.protector(e, false)
	if err != nil {
		return err
	}
	cf := clevisFlags{timeout: 5 * time.Second, attempts: 3, caFile: cfg.TangCAFile}
	if cfg.TangTimeout > 0 {
		cf.timeout = cfg.TangTimeout
	}
	if cfg.TangAttempts > 0 {
		cf.attempts = cfg.TangAttempts
	}
	cp, err := cf.protector(e, cfg.TPMDevice)
	if err != nil {
		return err
	}
	var measurer daemon.Measurer
	if tpmPresent(cfg.TPMDevice) {
		// Volumes are measured into PCR 15 by default (tpm2-measure-pcr=no opts out).
		measurer = func(ctx context.Context, pcr int, name, uuid string, key []byte) error {
			return measure(ctx, cfg.TPMDevice, pcr, name, uuid, key)
		}
	} else {
		e.log.Info("no TPM: volumes are not measured", "tpm2_device", cfg.TPMDevice)
	}
	al := audit.New(audit.Options{Path: audit.PathFrom(e.getenv, cfg.AuditLog), Actor: "daemon", Logger: e.log})
	kp, kmetrics, err := daemonKMIP(e, cfg)
	if err != nil {
		return err
	}
	// Under systemd, log to journald's native protocol: structured fields (VOLUME=,
	// TOKEN=, PROTECTOR=) and MESSAGE_IDs instead of plain stderr lines.
	log, _ := systemd.JournalLogger(e.log)
	d := &daemon.Daemon{
		Metrics: kmetrics,
		Config:  cfg,
		Protectors: func(daemon.VolumeConfig) []unlock.Protector {
			return append([]unlock.Protector{cp, auditedTPM{prot, cfg.TPMDevice}}, kp)
		},
		Measure:  measurer,
		Notifier: &systemd.Notifier{},
		Logger:   log,
		Audit:    al,
		Reseal:   resealer(e, cfg.TPMDevice, al),
	}
	if !*once {
		// Hot-plug: kernel uevents (netlink, no udev) and SIGHUP reloads.
		if src, err := daemon.OpenNetlinkUevents(); err != nil {
			e.log.Warn("hot-plug disabled: cannot listen to kernel uevents", "error", err)
		} else {
			defer src.Close()
			d.Uevents = src
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go reloadOnHUP(ctx, e, d, *cfgPath, hup)
	}
	err = d.Run(ctx, *once)
	st := d.Status()
	if *once {
		for _, s := range st {
			line := fmt.Sprintf("%s: %s", s.Name, s.State)
			if s.Reason != "" {
				line += ": " + s.Reason
			}
			if s.State == daemon.StateUnlocked {
				line += fmt.Sprintf(" (token %s, started %.3fs, keyslot %.3fs-%.3fs, %.3fs)", s.Token, s.Started, s.KeyslotStart, s.KeyslotEnd, s.Seconds)
			}
			if s.Reseal != "" {
				line += "; " + s.Reseal
			}
			fmt.Fprintln(e.stdout, line)
		}
	}
	return err
}

// reloadOnHUP re-reads the configuration file on each SIGHUP and hands it to the
// daemon; a file that does not parse is logged and the running configuration kept.
func reloadOnHUP(ctx context.Context, e *env, d *daemon.Daemon, path string, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		fh, err := os.Open(path)
		if err != nil {
			e.log.Error("reload: keeping the running configuration", "error", err)
			continue
		}
		cfg, err := daemon.ParseConfig(fh)
		fh.Close()
		if err != nil {
			e.log.Error("reload: keeping the running configuration", "error", err)
			continue
		}
		d.Reload(ctx, cfg)
	}
}

// tpmPresent reports whether the TPM device exists: a swtpm socket or a TPM character
// device (/dev/tpmrm0 when device is empty).
func tpmPresent(device string) bool {
	if p, ok := strings.CutPrefix(device, "swtpm:path="); ok {
		device = p
	}
	if device == "" {
		device = "/dev/tpmrm0"
	}
	_, err := os.Stat(device)
	return err == nil
}

// daemonStatus asks a running daemon for its volumes' states; ok is false when no
// daemon answers on the socket. A socket the caller may not use is reported on stderr.
func daemonStatus(ctx context.Context, stderr io.Writer, socket string) ([]daemon.VolumeStatus, bool) {
	if _, err := os.Stat(socket); err != nil {
		return nil, false
	}
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://diskcryptd/v1/volumes", nil)
	if err != nil {
		return nil, false
	}
	resp, err := c.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			// The socket is 0660 root:diskcryptd: say so rather than show nothing.
			fmt.Fprintf(stderr, "diskcryptd: cannot read the daemon's status on %s: permission denied\nhint: the status socket is for root and the group %s\n", socket, daemon.DefaultSocketGroup)
		}
		return nil, false
	}
	defer resp.Body.Close()
	var st []daemon.VolumeStatus
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil, false
	}
	return st, true
}
