package vmtests

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// MonitorAction is a QEMU monitor (HMP) command the host sends when the guest's
// serial console shows a marker: the guest prints the marker (echo MARKER >/dev/console)
// when it is ready for the host to act, e.g. to hot-plug a disk.
type MonitorAction struct {
	// When is the console text that triggers the command.
	When string
	// Command is an HMP command line, e.g. "device_add virtio-blk-pci,drive=hp0,...".
	Command string
}

// HotplugAdd returns the HMP command that plugs d (one of Machine.HotplugDisks) in as
// a virtio disk with its serial; HotplugDel unplugs it.
func HotplugAdd(d Disk) string {
	return fmt.Sprintf("device_add virtio-blk-pci,drive=hp-%s,serial=%s,id=hpdev-%s", d.Serial, d.Serial, d.Serial)
}

// HotplugDel returns the HMP command that unplugs a disk HotplugAdd plugged in.
func HotplugDel(d Disk) string { return "device_del hpdev-" + d.Serial }

// monitorArgs returns the QEMU arguments for the monitor socket and the hot-plug
// drives (backends only: the devices come with HotplugAdd), or nothing when the
// machine uses neither.
func (m *Machine) monitorArgs(dir string) []string {
	if len(m.MonitorActions) == 0 && len(m.HotplugDisks) == 0 {
		return nil
	}
	args := []string{"-monitor", "unix:" + filepath.Join(dir, "mon.sock") + ",server=on,wait=off"}
	for _, d := range m.HotplugDisks {
		args = append(args, "-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=hp-%s,cache=unsafe", d.Path, d.Serial))
	}
	return args
}

// runMonitorActions follows the console log and sends each action's command, in
// order, once its marker appears. It returns when all ran or ctx ends.
func (m *Machine) runMonitorActions(ctx context.Context, dir, console string) {
	if len(m.MonitorActions) == 0 {
		return
	}
	sock := filepath.Join(dir, "mon.sock")
	next := 0
	for next < len(m.MonitorActions) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		log, err := os.ReadFile(console)
		if err != nil || !strings.Contains(string(log), m.MonitorActions[next].When) {
			continue
		}
		a := m.MonitorActions[next]
		out, err := hmp(ctx, sock, a.Command)
		// HMP echoes the command as it redraws the line; its answer follows.
		_, answer, _ := strings.Cut(ansi.ReplaceAllString(out, ""), "\n")
		m.Logf("monitor: %q after %q: %q %v", a.Command, a.When, strings.TrimSpace(answer), err)
		next++
	}
}

// ansi matches the terminal control sequences HMP echoes the command with.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// hmp sends one HMP command over the monitor socket and returns what QEMU answered.
func hmp(ctx context.Context, sock, command string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	var out strings.Builder
	readPrompt := func() error {
		for !strings.HasSuffix(out.String(), "(qemu) ") {
			n, err := c.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := readPrompt(); err != nil {
		return out.String(), err
	}
	out.Reset()
	if _, err := c.Write([]byte(command + "\n")); err != nil {
		return "", err
	}
	err = readPrompt()
	return strings.TrimSuffix(out.String(), "(qemu) "), err
}
