package vmtests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// GoBuild builds the main package pkg (relative to the module root) as a static
// binary at out.
func GoBuild(ctx context.Context, root, pkg, out string) error {
	return goCmd(ctx, root, "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
}

// GoTestBinary builds the test binary of pkg as a static binary at out.
func GoTestBinary(ctx context.Context, root, pkg, out string) error {
	return goCmd(ctx, root, "test", "-c", "-trimpath", "-o", out, pkg)
}

func goCmd(ctx context.Context, root string, args ...string) error {
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func goTool() string {
	if p := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// HasMainPackage reports whether dir (relative to root) holds Go files of package main.
func HasMainPackage(root, dir string) bool {
	return hasPackageFiles(filepath.Join(root, dir), "package main", false)
}

// HasTests reports whether dir holds a _test.go file that declares funcName prefix.
func HasTests(root, dir, funcPrefix string) bool {
	return hasPackageFiles(filepath.Join(root, dir), "func "+funcPrefix, true)
}

func hasPackageFiles(dir, needle string, tests bool) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") != tests {
			continue
		}
		data, err := os.ReadFile(f)
		if err == nil && strings.Contains(string(data), needle) {
			return true
		}
	}
	return false
}
