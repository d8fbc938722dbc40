package vmtests

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

var (
	vmFlag      = flag.Bool("vm", false, "run the QEMU virtual machine tests")
	bootTimeout = flag.Duration("vm.boot-timeout", 4*time.Minute, "hard deadline of one guest boot")
	keepFlag    = flag.Bool("vm.keep", false, "keep every machine folder, not only those of failed tests")
	demoFlag    = flag.Bool("vm.demo", false, "run TestDemo, the make demo transcript")
)

const moduleRoot = ".."

var (
	envOnce sync.Once
	envVal  *Env
	envErr  error
	envSkip string
	// missing maps an optional guest binary to why it is absent.
	missing = map[string]string{}
	// testBinaries maps a guest test binary name to its host file; tests add them
	// to their machines' boots with Machine.Extra.
	testBinaries = map[string]string{}
	// broken maps an optional guest binary to its build error.
	broken = map[string]error{}
)

// setup returns the shared assets, skipping the test without -vm and failing (under
// CI) or skipping (elsewhere) when a host tool is missing.
func setup(t *testing.T) *Env {
	t.Helper()
	if !*vmFlag {
		t.Skip("VM test: run with -vm (make vmtest)")
	}
	envOnce.Do(func() { envVal, envSkip, envErr = buildEnv() })
	if envSkip != "" {
		testpeer.Missing(t, "%s", envSkip)
	}
	if envErr != nil {
		t.Fatalf("VM assets: %v", envErr)
	}
	return envVal
}

func buildEnv() (*Env, string, error) {
	for _, tool := range []string{"qemu-system-x86_64", "swtpm", "apt-get", "apt-cache", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, "missing host tool " + tool + " (apt-get install qemu-system-x86 swtpm)", nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cache, err := filepath.Abs(".cache")
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(filepath.Join(cache, "bin"), 0o755); err != nil {
		return nil, "", err
	}
	start := time.Now()
	k, err := FetchKernel(ctx, cache)
	if err != nil {
		return nil, "", err
	}
	busybox, err := FetchBusybox(ctx, cache)
	if err != nil {
		return nil, "", err
	}
	mods, err := ResolveModules(k.ModulesDir, guestModules)
	if err != nil {
		return nil, "", err
	}
	e := &Env{Kernel: k, Modules: mods, Binaries: map[string]string{}, Accel: "tcg"}
	accel := os.Getenv("VMTEST_ACCEL")
	if accel != "" && accel != "auto" {
		e.Accel = accel
	}
	bin := func(name string) string { return filepath.Join(cache, "bin", name) }
	if err := GoBuild(ctx, moduleRoot, "./vmtests/guest/pcrextend", bin("pcrextend")); err != nil {
		return nil, "", err
	}
	e.Binaries["/bin/pcrextend"] = bin("pcrextend")
	switch {
	case os.Getenv("DISKCRYPTD_BIN") != "":
		p := os.Getenv("DISKCRYPTD_BIN")
		if err := checkStatic(p); err != nil {
			return nil, "", err
		}
		e.Binaries["/bin/diskcryptd"] = p
	case HasMainPackage(moduleRoot, "cmd/diskcryptd"):
		if err := GoBuild(ctx, moduleRoot, "./cmd/diskcryptd", bin("diskcryptd")); err != nil {
			broken["diskcryptd"] = err
		} else {
			e.Binaries["/bin/diskcryptd"] = bin("diskcryptd")
		}
	default:
		missing["diskcryptd"] = "cmd/diskcryptd has no main package yet"
	}
	if HasTests(moduleRoot, "blockdev", "TestDM") {
		if err := GoTestBinary(ctx, moduleRoot, "./blockdev", bin("blockdev.test")); err != nil {
			broken["blockdev.test"] = err
		} else {
			testBinaries["blockdev.test"] = bin("blockdev.test")
		}
	} else {
		missing["blockdev.test"] = "blockdev/ has no TestDM tests yet"
	}
	if err := e.BuildInitramfs(busybox); err != nil {
		return nil, "", err
	}
	if accel == "auto" {
		e.Accel = probeAccel(ctx, e)
	}
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.Name
	}
	fmt.Fprintf(os.Stderr, "vmtests: kernel %s (%s), modules %s, initramfs %d KiB, assets in %s\n",
		k.Release, k.Version, strings.Join(names, " "), len(e.Initramfs)>>10, time.Since(start).Round(time.Millisecond))
	return e, "", nil
}

// need skips the test when an optional guest binary is not written yet, and fails it
// when its package does not build.
func need(t *testing.T, e *Env, binary string) {
	t.Helper()
	if err := broken[binary]; err != nil {
		// In a shared work tree a package may be mid-edit; a clean checkout (CI)
		// must build.
		testpeer.Missing(t, "needs %s, which does not build: %v", binary, err)
	}
	_, isTest := testBinaries[binary]
	if _, ok := e.Binaries["/bin/"+binary]; !ok && !isTest {
		testpeer.Missing(t, "needs %s: %s", binary, missing[binary])
	}
}

// newMachine makes a machine in a short temporary folder, removed after the test
// unless it failed (or -vm.keep), in which case its path is logged.
func newMachine(t *testing.T, e *Env) *Machine {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || *keepFlag {
			t.Logf("machine folder kept: %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	m, err := e.NewMachine(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Logf = t.Logf
	return m
}

func addDisk(t *testing.T, m *Machine, serial string, size int64) string {
	t.Helper()
	p, err := m.AddDisk(serial, size)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// boot boots m with a hard deadline and fails the test if the guest did not report
// every step. Individual step failures are for the caller to judge.
func boot(t *testing.T, m *Machine, files map[string][]byte, steps ...Step) *Boot {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), *bootTimeout)
	defer cancel()
	b, err := m.Boot(ctx, steps, files)
	if err != nil {
		if b != nil {
			for _, r := range b.Results {
				t.Logf("%s", r)
			}
		}
		if errors.Is(err, ErrIncomplete) || b != nil {
			if tail, rerr := os.ReadFile(b.Console); rerr == nil {
				t.Logf("console tail:\n%s", lastLines(string(tail), 40))
			}
		}
		t.Fatal(err)
	}
	return b
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ok fails the test unless the named step exited 0, and returns its result.
func ok(t *testing.T, b *Boot, name string) *Result {
	t.Helper()
	r := b.Result(name)
	if r == nil {
		t.Fatalf("step %q did not run", name)
	}
	if r.Exit != 0 {
		t.Fatalf("%s", r)
	}
	return r
}

// TestSmoke boots the guest, loads the modules and asks it about its TPM and
// device-mapper: it checks the harness itself, whatever else is built.
func TestSmoke(t *testing.T) {
	e := setup(t)
	m := newMachine(t, e)
	addDisk(t, m, "data0", 16<<20)
	b := boot(t, m, map[string][]byte{"/etc/secret": []byte("s3cret\n")},
		Step{Name: "tpm", Script: "ls /dev/tpm0 /dev/tpmrm0\ncat /sys/class/tpm/tpm0/tpm_version_major"},
		Step{Name: "pcr7", Script: "cat /sys/class/tpm/tpm0/pcr-sha256/7"},
		Step{Name: "dm", Script: "test -c /dev/mapper/control && grep -w device-mapper /proc/misc"},
		Step{Name: "crypto", Script: "grep -A4 -w 'xts(aes)' /proc/crypto | grep -q driver || { cat /proc/crypto | grep -E '^(name|driver)' >&2; exit 1; }; echo xts-aes ok"},
		Step{Name: "disk", Script: "disk data0; cat /sys/block/$(basename $(disk data0))/size"},
		Step{Name: "fails", Script: "echo out; echo err >&2; exit 3"},
		Step{Name: "file", Script: "stat -c '%a %s' /etc/secret; cat /etc/secret"},
		Step{Name: "pcrextend", Script: "before=$(cat /sys/class/tpm/tpm0/pcr-sha256/7)\npcrextend -pcr 7\nafter=$(cat /sys/class/tpm/tpm0/pcr-sha256/7)\n[ \"$before\" != \"$after\" ] && echo changed"},
	)
	t.Logf("guest ready at %.2fs uptime, boot wall time %s", b.Ready, b.Wall.Round(time.Millisecond))
	tpm := ok(t, b, "tpm")
	if !strings.Contains(string(tpm.Stdout), "/dev/tpmrm0") || !strings.HasSuffix(strings.TrimSpace(string(tpm.Stdout)), "2") {
		t.Errorf("no TPM 2.0 in the guest:\n%s", tpm)
	}
	pcr := ok(t, b, "pcr7")
	if v := strings.TrimSpace(string(pcr.Stdout)); len(v) != 64 || v == strings.Repeat("0", 64) {
		t.Errorf("PCR 7 = %q; SeaBIOS should have measured into it", v)
	}
	ok(t, b, "dm")
	ok(t, b, "crypto")
	if r := ok(t, b, "disk"); !strings.Contains(string(r.Stdout), "/dev/vda\n32768") {
		t.Errorf("disk data0: %s", r)
	}
	f := b.Result("fails")
	if f.Exit != 3 || string(f.Stdout) != "out\n" || string(f.Stderr) != "err\n" {
		t.Errorf("structured results: %s", f)
	}
	if r := ok(t, b, "file"); string(r.Stdout) != "600 7\ns3cret\n" {
		t.Errorf("boot file: %s", r)
	}
	if r := ok(t, b, "pcrextend"); string(r.Stdout) != "changed\n" {
		t.Errorf("pcrextend: %s", r)
	}
}

// probeAccel returns "kvm" when /dev/kvm exists and a guest actually boots with it
// (nested KVM often aborts or hangs), else "tcg".
func probeAccel(ctx context.Context, e *Env) string {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return "tcg"
	}
	dir, err := os.MkdirTemp("", "vmt-probe-")
	if err != nil {
		return "tcg"
	}
	defer os.RemoveAll(dir)
	probe := *e
	probe.Accel = "kvm"
	m, err := probe.NewMachine(dir)
	if err != nil {
		return "tcg"
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := m.Boot(ctx, []Step{{Name: "probe", Script: "true"}}, nil); err != nil {
		fmt.Fprintf(os.Stderr, "vmtests: KVM guest did not boot (%v); using TCG\n", err)
		return "tcg"
	}
	return "kvm"
}
