// Package systemd holds what diskcryptd needs from systemd at run time: readiness and
// status notifications (sd_notify) and the watchdog, for a Type=notify service.
//
// Every function is a no-op outside systemd (NOTIFY_SOCKET unset), so the daemon runs
// the same in an initramfs without systemd, in tests and under systemd.
package systemd

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages. The zero value uses the process environment's
// NOTIFY_SOCKET.
type Notifier struct {
	// send is daemon.SdNotify unless a test replaces it.
	send func(unsetEnv bool, state string) (bool, error)
}

func (n *Notifier) notify(state string) error {
	send := n.send
	if send == nil {
		send = daemon.SdNotify
	}
	if _, err := send(false, state); err != nil {
		return fmt.Errorf("systemd: sd_notify %q: %w", state, err)
	}
	return nil
}

// Ready tells systemd the service finished starting, with a status line.
func (n *Notifier) Ready(status string) error {
	return n.notify(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// Status updates the one-line status systemctl shows.
func (n *Notifier) Status(status string) error {
	return n.notify("STATUS=" + status)
}

// Stopping tells systemd the service is shutting down.
func (n *Notifier) Stopping() error {
	return n.notify(daemon.SdNotifyStopping)
}

// Watchdog pings systemd's watchdog at half the configured interval until ctx ends. It
// returns at once when the unit has no WatchdogSec.
func (n *Notifier) Watchdog(ctx context.Context) error {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("systemd: watchdog: %w", err)
	}
	if interval == 0 {
		return nil
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := n.notify(daemon.SdNotifyWatchdog); err != nil {
				return err
			}
		}
	}
}
