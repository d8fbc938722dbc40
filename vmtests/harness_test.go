package vmtests

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/diskcryptd/diskcryptd/internal/testpeer"
)

// TestParseResults checks the host side of the guest protocol without a VM: records
// are length-prefixed, bound to the boot's nonce, and incomplete output is an error.
func TestParseResults(t *testing.T) {
	steps := []Step{{Name: "a"}, {Name: "b"}}
	good := "@@n1 BOOT 2.50\n" +
		"@@n1 STEP 000 0 6 0 2.60\nhello\n" +
		"@@n1 STEP 001 3 5 4 2.70\n@@n1 err\n" +
		"@@n1 END\n"
	var b Boot
	if err := parseResults([]byte(good), "n1", steps, &b); err != nil {
		t.Fatal(err)
	}
	if b.Ready != 2.5 || len(b.Results) != 2 {
		t.Fatalf("parsed %+v", b)
	}
	if r := b.Result("b"); r.Exit != 3 || string(r.Stdout) != "@@n1 " || string(r.Stderr) != "err\n" {
		t.Errorf("step b: %s", r)
	}
	for name, bad := range map[string]string{
		"other nonce": strings.ReplaceAll(good, "@@n1 STEP 001", "@@n2 STEP 001"),
		"no END":      strings.TrimSuffix(good, "@@n1 END\n"),
		"short":       strings.Replace(good, "STEP 000 0 6", "STEP 000 0 60", 1),
		"skipped":     strings.Replace(good, "STEP 001", "STEP 002", 1),
		"empty":       "",
	} {
		var b Boot
		if err := parseResults([]byte(bad), "n1", steps, &b); !errors.Is(err, ErrIncomplete) {
			t.Errorf("%s: err = %v; want ErrIncomplete", name, err)
		}
	}
}

// TestArchive checks the cpio writer against the host's cpio, when it has one.
func TestArchive(t *testing.T) {
	testpeer.Require(t, "cpio")
	a := NewArchive()
	a.File("/etc/a/b.txt", []byte("hello"), 0o600)
	a.Symlink("/bin/sh", "busybox")
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"drwxr-xr-x", " etc/a\n", "-rw-------", "etc/a/b.txt", "bin/sh -> busybox"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, out)
		}
	}
}
