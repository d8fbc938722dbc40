package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// KernelMetaPackage is the Debian package whose dependency names the cloud kernel.
const KernelMetaPackage = "linux-image-cloud-amd64"

// guestModules are the kernel modules the guest loads (with their dependencies, in
// dependency order). Modules built into the kernel are skipped.
var guestModules = []string{
	"virtio_ring", "virtio", "virtio_pci", "virtio_blk", "virtio_console",
	"dm-mod", "dm-crypt",
	"ecb", "xts", "aesni-intel", "sha256_ssse3",
	"ext4", "loop",
	"tpm_tis", "tpm_crb",
	"virtio_net", // Machine.GuestFwd
}

// Kernel is an extracted Debian kernel package.
type Kernel struct {
	// Version is the Debian package version, e.g. "6.1.192-2".
	Version string
	// Release is the kernel release, the folder name under /lib/modules.
	Release string
	// Image is the path of the vmlinuz.
	Image string
	// ModulesDir is /lib/modules/RELEASE inside the extracted package.
	ModulesDir string
}

// FetchKernel downloads the Debian cloud kernel named by KernelMetaPackage with
// apt-get and extracts it into cacheDir/kernel-VERSION, unless it is already there.
func FetchKernel(ctx context.Context, cacheDir string) (*Kernel, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", KernelMetaPackage).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends %s: %w", KernelMetaPackage, err)
	}
	m := regexp.MustCompile(`Depends:\s*(linux-image-\S+)`).FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("apt-cache depends %s names no linux-image package:\n%s", KernelMetaPackage, out)
	}
	dir, version, err := fetchDeb(ctx, cacheDir, string(m[1]))
	if err != nil {
		return nil, err
	}
	images, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return nil, fmt.Errorf("package %s: want one boot/vmlinuz-*, have %v", m[1], images)
	}
	release := strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")
	return &Kernel{
		Version:    version,
		Release:    release,
		Image:      images[0],
		ModulesDir: filepath.Join(dir, "lib", "modules", release),
	}, nil
}

// FetchBusybox returns the path of a statically linked busybox from the Debian
// busybox-static package, downloaded and extracted into cacheDir.
func FetchBusybox(ctx context.Context, cacheDir string) (string, error) {
	dir, _, err := fetchDeb(ctx, cacheDir, "busybox-static")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "bin", "busybox")
	if err := checkStatic(p); err != nil {
		return "", err
	}
	return p, nil
}

// fetchDeb downloads pkg's candidate version and extracts it into
// cacheDir/PKG-VERSION, keyed by version so a new package gets a new folder.
func fetchDeb(ctx context.Context, cacheDir, pkg string) (dir, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "policy", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache policy %s: %w", pkg, err)
	}
	m := regexp.MustCompile(`Candidate:\s*(\S+)`).FindSubmatch(out)
	if m == nil || string(m[1]) == "(none)" {
		return "", "", fmt.Errorf("no candidate version of %s (run apt-get update)", pkg)
	}
	version = string(m[1])
	safe := strings.NewReplacer(":", "_", "/", "_").Replace(version)
	dir = filepath.Join(cacheDir, pkg+"-"+safe)
	stamp := filepath.Join(dir, ".complete")
	if _, err := os.Stat(stamp); err == nil {
		return dir, version, nil
	}
	dl := filepath.Join(cacheDir, "deb")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", "", err
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", pkg+"="+version)
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("apt-get download %s=%s: %w\n%s", pkg, version, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	var deb string
	for _, d := range debs {
		if strings.Contains(filepath.Base(d), "_"+strings.ReplaceAll(version, ":", "%3a")+"_") {
			deb = d
		}
	}
	if deb == "" {
		return "", "", fmt.Errorf("apt-get download %s=%s left no .deb in %s (have %v)", pkg, version, dl, debs)
	}
	_ = os.RemoveAll(dir)
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", deb, dir).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("dpkg -x %s: %w\n%s", deb, err, out)
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		return "", "", err
	}
	_ = os.Remove(deb)
	return dir, version, nil
}

// checkStatic fails unless path is an ELF executable without a program interpreter.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the initramfs needs static binaries", path)
		}
	}
	return nil
}

// Module is one loadable kernel module file.
type Module struct {
	// Name is the module name with '-' normalised to '_'.
	Name string
	// Path is the file inside the extracted kernel package.
	Path string
}

// ResolveModules returns the modules that the named ones need, dependencies (from the
// .modinfo "depends=" and "softdep=pre:" fields) before their users. Names that are
// built into the kernel, or absent from this kernel, are dropped; a missing hard
// dependency is an error. The package ships no
// modules.dep (depmod runs at install time), so the .ko files are read directly.
func ResolveModules(modulesDir string, names []string) ([]Module, error) {
	byName := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modulesDir, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			byName[modName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan modules: %w", err)
	}
	builtin := map[string]bool{}
	if f, err := os.Open(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			builtin[modName(strings.TrimSuffix(filepath.Base(s.Text()), ".ko"))] = true
		}
		f.Close()
	}
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, required bool) error
	visit = func(name string, required bool) error {
		name = modName(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		path, ok := byName[name]
		if !ok {
			if builtin[name] || !required {
				state[name] = 2
				return nil
			}
			return fmt.Errorf("kernel module %s is neither a module nor built in", name)
		}
		state[name] = 1
		deps, soft, err := moduleDeps(path)
		if err != nil {
			return err
		}
		for _, d := range soft {
			if err := visit(d, false); err != nil {
				return err
			}
		}
		for _, d := range deps {
			if err := visit(d, true); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, Module{Name: name, Path: path})
		return nil
	}
	for _, n := range names {
		if err := visit(n, false); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleDeps reads the hard and soft ("pre:") dependencies from a module's .modinfo.
func moduleDeps(path string) (deps, softPre []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil, fmt.Errorf("module %s has no .modinfo", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, nil, fmt.Errorf("module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		s := string(kv)
		switch {
		case strings.HasPrefix(s, "depends="):
			for _, d := range strings.Split(strings.TrimPrefix(s, "depends="), ",") {
				if d != "" {
					deps = append(deps, d)
				}
			}
		case strings.HasPrefix(s, "softdep="):
			// e.g. "pre: ecb post: foo"
			fields := strings.Fields(strings.TrimPrefix(s, "softdep="))
			pre := false
			for _, w := range fields {
				switch {
				case strings.HasSuffix(w, ":"):
					pre = w == "pre:"
				case pre:
					softPre = append(softPre, w)
				}
			}
		}
	}
	sort.Strings(deps)
	return deps, softPre, nil
}
