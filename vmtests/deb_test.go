package vmtests

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestDebPackage builds the Debian package as `make deb` does (no VM) and checks what
// it ships and that its scripts and man page parse; TestSystemd installs it in a guest.
func TestDebPackage(t *testing.T) {
	testpeer.Require(t, "dpkg-deb", "man", "sh", "bash")
	dir := t.TempDir()
	bin := filepath.Join(dir, "diskcryptd")
	if err := GoBuild(t.Context(), moduleRoot, "./cmd/diskcryptd", bin); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "diskcryptd.deb")
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), name, args...)
		cmd.Dir = moduleRoot
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("sh", "contrib/debian/build-deb.sh", bin, "1.2.3+test", deb)
	if out, err := exec.Command("sh", filepath.Join(moduleRoot, "contrib/debian/build-deb.sh"), bin, "v1", deb).CombinedOutput(); err == nil {
		t.Errorf("build-deb.sh accepted version v1 (Debian versions start with a digit): %s", out)
	}
	info := run("dpkg-deb", "-f", deb, "Package", "Version", "Architecture")
	if info != "Package: diskcryptd\nVersion: 1.2.3+test\nArchitecture: amd64\n" {
		t.Errorf("control fields:\n%s", info)
	}
	list := run("dpkg-deb", "-c", deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root", "./usr/sbin/diskcryptd\n",
		"-rw-r--r-- root/root", "./lib/systemd/system/diskcryptd.service\n",
		"./usr/share/doc/diskcryptd/examples/diskcryptd.conf\n",
		"./usr/share/doc/diskcryptd/examples/initramfs.conf\n",
		"./usr/share/initramfs-tools/hooks/diskcryptd\n",
		"./usr/share/initramfs-tools/scripts/local-top/diskcryptd\n",
		"./usr/lib/diskcryptd/diskcryptd-initramfs-unlock\n",
		"./usr/lib/dracut/modules.d/90diskcryptd/module-setup.sh\n",
		"./usr/lib/dracut/modules.d/90diskcryptd/diskcryptd-unlock.sh\n",
		"./usr/share/man/man8/diskcryptd.8.gz\n",
		"./usr/share/doc/diskcryptd/copyright\n",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("package lacks %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, "./etc/") {
		t.Errorf("package ships files under /etc (the configuration is the operator's):\n%s", list)
	}
	// Shell syntax of every script the package runs.
	for _, s := range []string{"contrib/debian/postinst", "contrib/debian/prerm", "contrib/debian/postrm",
		"contrib/initramfs-tools/hooks/diskcryptd", "contrib/initramfs-tools/scripts/local-top/diskcryptd",
		"contrib/initramfs/diskcryptd-initramfs-unlock", "contrib/dracut/90diskcryptd/diskcryptd-unlock.sh"} {
		run("sh", "-n", s)
	}
	run("bash", "-n", "contrib/dracut/90diskcryptd/module-setup.sh")
	// The man page renders without groff warnings.
	cmd := exec.CommandContext(t.Context(), "man", "--warnings", "-l", "contrib/man/diskcryptd.8")
	cmd.Dir = moduleRoot
	cmd.Env = append(cmd.Environ(), "MANWIDTH=80", "MAN_KEEP_FORMATTING=0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	page, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Errorf("man diskcryptd.8: %v\n%s", err, stderr.String())
	}
	text := regexp.MustCompile(`.\x08`).ReplaceAllString(string(page), "") // overstrike bold/underline
	for _, want := range []string{"DISKCRYPTD(8)", "SYNOPSIS", "serve", "EXIT STATUS", "initramfs.conf"} {
		if !strings.Contains(text, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
}
