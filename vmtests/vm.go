package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Env holds the assets every guest boots from: the kernel and the base initramfs
// (busybox, modules, static binaries, /init).
type Env struct {
	// Kernel is the extracted Debian cloud kernel.
	Kernel *Kernel
	// Initramfs is the base initramfs, an uncompressed newc cpio archive. Each boot
	// appends a small archive with its steps.
	Initramfs []byte
	// Binaries maps a guest path (/bin/NAME) to the host file put there.
	Binaries map[string]string
	// Modules are the kernel modules /init loads, in order.
	Modules []Module
	// Accel is the QEMU accelerator, "tcg" unless VMTEST_ACCEL says otherwise.
	Accel string
}

// BuildInitramfs packs busybox, the modules and the binaries into e.Initramfs.
func (e *Env) BuildInitramfs(busybox string) error {
	a := NewArchive()
	for _, d := range []string{"/dev", "/proc", "/sys", "/tmp", "/run", "/etc", "/steps", "/sbin", "/usr/bin"} {
		a.Dir(d, 0o755)
	}
	if err := a.CopyFile("/bin/busybox", busybox); err != nil {
		return err
	}
	a.Symlink("/bin/sh", "busybox")
	a.File("/init", []byte(initScript), 0o755)
	a.File("/etc/lib.sh", []byte(libScript), 0o644)
	var order strings.Builder
	for _, m := range e.Modules {
		if err := a.CopyFile("/lib/modules/"+m.Name+".ko", m.Path); err != nil {
			return err
		}
		order.WriteString(m.Name + "\n")
	}
	a.File("/etc/modules.order", []byte(order.String()), 0o644)
	for guest, host := range e.Binaries {
		if err := a.CopyFile(guest, host); err != nil {
			return err
		}
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		return err
	}
	e.Initramfs = buf.Bytes()
	return nil
}

// Machine is one virtual machine: a folder with its TPM state (kept across boots, so
// every boot is the same machine) and its raw disk images.
type Machine struct {
	env *Env
	// Dir holds the TPM state, the disks and one subfolder of logs per boot.
	Dir string
	// TPMState is the swtpm state folder.
	TPMState string
	// Disks are attached in this order, as virtio disks with these serials.
	Disks []Disk
	// Memory in MiB (default 1024) and CPUs (default 2).
	Memory, CPUs int
	// Append is added to the kernel command line.
	Append string
	// Extra maps guest paths to host executables added to this machine's boots only
	// (large test binaries stay out of every other boot's initramfs).
	Extra map[string]string
	// GuestFwd, when not empty, gives the guest a network: QEMU user networking with
	// restrict=on (the guest reaches nothing else) and, for each entry, a forward from
	// GuestAddr:GuestPort in the guest to 127.0.0.1:HostPort on the host. The guest's
	// /init brings eth0 up as GuestIP/24.
	GuestFwd []GuestFwd
	// HotplugDisks are disk images QEMU opens without attaching them: a MonitorAction
	// with HotplugAdd plugs one in while the guest runs (monitor.go).
	HotplugDisks []Disk
	// MonitorActions are QEMU monitor commands sent when the guest's console shows a
	// marker (monitor.go).
	MonitorActions []MonitorAction
	// ConsoleReplies are typed on the serial console when it shows their prompts
	// (console.go).
	ConsoleReplies []ConsoleReply
	// Logf receives progress lines (testing.T.Logf).
	Logf  func(format string, args ...any)
	boots int
}

// Guest network addresses when Machine.GuestFwd is set (QEMU user networking).
const (
	// GuestIP is the guest's own address on eth0 (static, /24).
	GuestIP = "10.0.2.15"
	// GuestAddr is the address in the guest whose ports lead to the host's 127.0.0.1.
	GuestAddr = "10.0.2.100"
)

// GuestFwd forwards TCP connections the guest makes to GuestAddr:GuestPort to the host's
// 127.0.0.1:HostPort. Each guest connection gets its own host connection.
type GuestFwd struct {
	// GuestPort is the port the guest connects to on GuestAddr.
	GuestPort int
	// HostPort is the port on the host's 127.0.0.1.
	HostPort int
}

// netArgs returns the QEMU arguments for fwd: user networking with restrict=on, so
// the forwards are the guest's only way out. Each forward runs socat per connection
// (QEMU's "cmd:" form; socat must be on the host's PATH): a "tcp:" chardev is one
// connection made when QEMU starts, shared by every guest connection, and with it a
// second guest connection hangs (seen with QEMU 7.2). socat logs to /dev/null: QEMU
// hands it the guest connection as stderr too, and its "connection refused" would
// reach the guest as if the host service had answered.
func netArgs(fwd []GuestFwd) []string {
	if len(fwd) == 0 {
		return nil
	}
	netdev := "user,id=net0,restrict=on,net=10.0.2.0/24"
	for _, f := range fwd {
		netdev += fmt.Sprintf(",guestfwd=tcp:%s:%d-cmd:socat -lf /dev/null - TCP:127.0.0.1:%d", GuestAddr, f.GuestPort, f.HostPort)
	}
	return []string{"-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"}
}

// Disk is a raw disk image attached on virtio.
type Disk struct {
	// Serial is the virtio serial the guest sees in /sys/block/vdX/serial.
	Serial string
	// Path is the image file on the host.
	Path string
}

// NewMachine creates a machine in dir (which must exist and be short enough for
// Unix socket paths).
func (e *Env) NewMachine(dir string) (*Machine, error) {
	m := &Machine{env: e, Dir: dir, TPMState: filepath.Join(dir, "tpm"), Memory: 1024, CPUs: 2,
		Logf: func(string, ...any) {}}
	if err := os.MkdirAll(m.TPMState, 0o700); err != nil {
		return nil, fmt.Errorf("machine: %w", err)
	}
	return m, nil
}

// AddDisk creates a sparse raw image of size bytes and attaches it with serial.
func (m *Machine) AddDisk(serial string, size int64) (string, error) {
	p := filepath.Join(m.Dir, serial+".img")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("add disk: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return "", fmt.Errorf("add disk: %w", err)
	}
	m.Disks = append(m.Disks, Disk{Serial: serial, Path: p})
	return p, nil
}

// Step is one guest command: a busybox sh script run with -e after /etc/lib.sh.
type Step struct {
	// Name identifies the step in results and logs.
	Name string
	// Script is the shell text.
	Script string
}

// Result is what the guest reported for one step.
type Result struct {
	Step
	// Exit is the script's exit status.
	Exit int
	// Stdout and Stderr are the script's output.
	Stdout, Stderr []byte
	// Uptime is the guest's uptime in seconds when the step ended.
	Uptime float64
}

// String formats r for test logs.
func (r *Result) String() string {
	return fmt.Sprintf("step %q exit %d\n--- stdout\n%s--- stderr\n%s", r.Name, r.Exit, r.Stdout, r.Stderr)
}

// Boot is the record of one boot.
type Boot struct {
	// Results has one entry per step that ran, in order.
	Results []*Result
	// Wall is the host time from starting QEMU to its exit.
	Wall time.Duration
	// Ready is the guest uptime (seconds) when /init was ready to run steps.
	Ready float64
	// Console is the serial console log file.
	Console string
}

// Result returns the result of the named step, or nil if it did not run.
func (b *Boot) Result(name string) *Result {
	for _, r := range b.Results {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// ErrIncomplete is returned (wrapped) when the guest did not report every step.
var ErrIncomplete = errors.New("guest did not finish its steps")

// Boot boots the machine once, runs steps in the guest and returns their results.
// The boot is bounded by ctx; QEMU and swtpm are killed when it ends. files are extra
// guest files (path -> contents) for this boot only, written with mode 0600.
func (m *Machine) Boot(ctx context.Context, steps []Step, files map[string][]byte) (*Boot, error) {
	m.boots++
	dir := filepath.Join(m.Dir, fmt.Sprintf("boot%d", m.boots))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	nonceBytes := make([]byte, 12)
	if _, err := rand.Read(nonceBytes); err != nil {
		return nil, err
	}
	nonce := hex.EncodeToString(nonceBytes)

	a := NewArchive()
	env := "NONCE=" + nonce + "\n"
	if len(m.GuestFwd) > 0 {
		env += "NET_IP=" + GuestIP + "\n"
	}
	a.File("/etc/boot.env", []byte(env), 0o644)
	for i, s := range steps {
		a.File(fmt.Sprintf("/steps/%03d.sh", i), []byte(s.Script), 0o644)
	}
	for p, data := range files {
		a.File(p, data, 0o600)
	}
	for guest, host := range m.Extra {
		if err := a.CopyFile(guest, host); err != nil {
			return nil, err
		}
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	f, err := os.OpenFile(initrd, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	_, err = f.Write(m.env.Initramfs)
	if err == nil {
		_, err = a.WriteTo(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("boot: write initrd: %w", err)
	}

	tpmSock := filepath.Join(dir, "swtpm.sock")
	swtpm, err := startSwtpm(ctx, m.TPMState, tpmSock, filepath.Join(dir, "swtpm.log"), "")
	if err != nil {
		return nil, err
	}
	defer swtpm.stop()

	results := filepath.Join(dir, "results")
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-accel", m.env.Accel, "-cpu", "max",
		"-m", strconv.Itoa(m.Memory), "-smp", strconv.Itoa(m.CPUs),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", m.env.Kernel.Image, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 loglevel=4 " + m.Append),
		"-chardev", "socket,id=tpmchr,path=" + tpmSock,
		"-tpmdev", "emulator,id=tpm0,chardev=tpmchr",
		"-device", "tpm-tis,tpmdev=tpm0",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "file,id=results,path=" + results,
		"-device", "virtserialport,bus=vser.0,chardev=results,name=results",
	}
	args = append(args, netArgs(m.GuestFwd)...)
	args = append(args, m.monitorArgs(dir)...)
	for i, d := range m.Disks {
		// -drive if=virtio cannot carry a serial in QEMU 7.2; split drive and device.
		args = append(args,
			"-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=disk%d,cache=unsafe", d.Path, i),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=disk%d,serial=%s", i, d.Serial))
	}
	log, err := os.Create(console)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	m.Logf("boot %d: qemu (%s), console log %s", m.boots, m.env.Accel, console)
	monCtx, monCancel := context.WithCancel(ctx)
	go m.runMonitorActions(monCtx, dir, console)
	if in := m.consoleInput(monCtx, console); in != nil {
		cmd.Stdin = in
		defer in.Close()
	}
	runErr := cmd.Run()
	monCancel()
	b := &Boot{Wall: time.Since(start), Console: console}
	res, perr := os.ReadFile(results)
	if perr == nil {
		perr = parseResults(res, nonce, steps, b)
	}
	m.Logf("boot %d: %d of %d steps, guest ready at %.2fs, wall %s", m.boots, len(b.Results), len(steps), b.Ready, b.Wall.Round(time.Millisecond))
	if ctx.Err() != nil {
		return b, fmt.Errorf("boot %d: %w (console %s)", m.boots, ctx.Err(), console)
	}
	if runErr != nil {
		return b, fmt.Errorf("boot %d: qemu: %w (console %s)", m.boots, runErr, console)
	}
	if perr != nil {
		return b, fmt.Errorf("boot %d: %w (console %s)", m.boots, perr, console)
	}
	return b, nil
}

// parseResults reads the records /init wrote to the results port.
func parseResults(data []byte, nonce string, steps []Step, b *Boot) error {
	r := bufio.NewReader(bytes.NewReader(data))
	prefix := "@@" + nonce + " "
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF && line == "" {
			return fmt.Errorf("%w: %d of %d steps reported, no END", ErrIncomplete, len(b.Results), len(steps))
		}
		if err != nil && err != io.EOF {
			return err
		}
		if !strings.HasPrefix(line, prefix) {
			return fmt.Errorf("%w: unexpected record %q", ErrIncomplete, line)
		}
		f := strings.Fields(strings.TrimPrefix(line, prefix))
		switch {
		case len(f) == 1 && f[0] == "END":
			if len(b.Results) != len(steps) {
				return fmt.Errorf("%w: END after %d of %d steps", ErrIncomplete, len(b.Results), len(steps))
			}
			return nil
		case len(f) == 2 && f[0] == "BOOT":
			b.Ready, _ = strconv.ParseFloat(f[1], 64)
		case len(f) == 6 && f[0] == "STEP":
			idx, err1 := strconv.Atoi(f[1])
			rc, err2 := strconv.Atoi(f[2])
			no, err3 := strconv.Atoi(f[3])
			ne, err4 := strconv.Atoi(f[4])
			up, _ := strconv.ParseFloat(f[5], 64)
			if err := errors.Join(err1, err2, err3, err4); err != nil || idx != len(b.Results) || idx >= len(steps) {
				return fmt.Errorf("%w: bad step record %q", ErrIncomplete, line)
			}
			res := &Result{Step: steps[idx], Exit: rc, Stdout: make([]byte, no), Stderr: make([]byte, ne), Uptime: up}
			if _, err := io.ReadFull(r, res.Stdout); err != nil {
				return fmt.Errorf("%w: step %d stdout: %v", ErrIncomplete, idx, err)
			}
			if _, err := io.ReadFull(r, res.Stderr); err != nil {
				return fmt.Errorf("%w: step %d stderr: %v", ErrIncomplete, idx, err)
			}
			b.Results = append(b.Results, res)
		default:
			return fmt.Errorf("%w: unexpected record %q", ErrIncomplete, line)
		}
	}
}

// swtpmProc is a running swtpm.
type swtpmProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startSwtpm starts swtpm on the state folder with a control socket for QEMU, or, if
// server is not empty, also a server socket and startup-clear for host-side tools.
func startSwtpm(ctx context.Context, state, ctrl, logFile, server string) (*swtpmProc, error) {
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + state,
		"--ctrl", "type=unixio,path=" + ctrl, "--log", "file=" + logFile + ",level=1"}
	if server != "" {
		args = append(args, "--server", "type=unixio,path="+server, "--flags", "startup-clear")
	} else {
		args = append(args, "--terminate")
	}
	cmd := exec.CommandContext(ctx, "swtpm", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	p := &swtpmProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	wait := []string{ctrl}
	if server != "" {
		wait = append(wait, server)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range wait {
		for {
			if _, err := os.Stat(s); err == nil {
				break
			}
			select {
			case <-p.done:
				return nil, fmt.Errorf("swtpm exited: %s", stderr.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				p.stop()
				return nil, fmt.Errorf("swtpm: no socket %s after 10s", s)
			}
		}
	}
	return p, nil
}

// stop ends swtpm: SIGTERM so it saves its state, SIGKILL if it lingers.
func (p *swtpmProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}
