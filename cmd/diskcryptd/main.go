// Command diskcryptd formats and manages LUKS2 volumes, seals their keyslot secrets to
// the machine's TPM2, and unlocks them at boot without a human.
//
// Usage:
//
//	diskcryptd [global flags] COMMAND [flags] ARGS
//
// Run "diskcryptd help" for the commands. Secrets are read from files or standard input
// (--key-file F, --key-file -), never from the command line.
//
// Exit codes follow cryptsetup's:
//
//	0  success
//	1  wrong parameters or usage, or another error
//	2  no permission: no keyslot accepts the key, or no token could unlock the volume
//	3  out of memory
//	4  wrong device specified (missing, not LUKS2, damaged, or carrying data without --force)
//	5  device already exists or is busy
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// Exit codes, as cryptsetup documents them.
const (
	exitOK         = 0
	exitUsage      = 1
	exitPermission = 2
	exitNoMemory   = 3
	exitDevice     = 4
	exitBusy       = 5
)

// env is what a command runs with: its streams and its logger. Nothing is global.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	log            hclog.Logger
	// getenv reads the environment (tests substitute it).
	getenv func(string) string
	// batch is --batch-mode (-q), accepted globally and by every command, as
	// cryptsetup accepts it: it answers "yes" to confirmations.
	batch bool
	// insecureKeyFile is --allow-insecure-key-file: read key files that group or
	// others may access.
	insecureKeyFile bool
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"format", "create a LUKS2 volume on a device or image", cmdFormat},
		{"dump", "print a volume's header (--json), or its volume key (--volume-key)", cmdDump},
		{"keyslot", "add, remove or list keyslots", cmdKeyslot},
		{"token", "import, export, remove or list tokens", cmdToken},
		{"header", "back up or restore the LUKS2 header", cmdHeader},
		{"repair", "rewrite a damaged header copy from the good one", cmdRepair},
		{"reencrypt", "rotate the volume key, re-encrypting all data offline (cryptsetup-compatible, resumable)", cmdReencrypt},
		{"erase", "destroy every keyslot: the data becomes unreadable", cmdErase},
		{"enroll", "add a protector: tpm2, recovery or clevis (tang, tpm2, sss)", cmdEnroll},
		{"unlock", "recover the volume key through tokens or a key file, and map the volume", cmdUnlock},
		{"lock", "remove a volume's mapping", cmdLock},
		{"status", "list mapped volumes, and the daemon's view of its volumes", cmdStatus},
		{"serve", "the daemon: unlock every configured volume, then report their states", cmdServe},
		{"pcr", "read or extend TPM2 PCRs", cmdPCR},
		{"version", "print the version", cmdVersion},
		{"audit", "print the audit log of key releases and key changes", cmdAudit},
		{"kms", "KMIP: rewrap a volume's KMS tokens under a new KEK, or make a TPM-held client key and CSR", cmdKMS},
		{"reseal", "seal a TPM2 protector whose PCRs changed to the current values", cmdReseal},
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is main without the process: it parses global flags, dispatches, and maps the
// error to an exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	level := hclog.Warn
	if lv := getenv("DISKCRYPTD_LOG_LEVEL"); lv != "" {
		level = hclog.LevelFromString(lv)
	}
	jsonLog, batch := false, false
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "-q", "--batch-mode", "-batch-mode":
			batch = true
		case "-v", "--verbose":
			level = hclog.Info
		case "--debug":
			level = hclog.Debug
		case "--log-json":
			jsonLog = true
		case "-h", "--help":
			args = []string{"help"}
			continue
		default:
			fmt.Fprintf(stderr, "diskcryptd: error: unknown global flag %s\n", args[0])
			return exitUsage
		}
		args = args[1:]
	}
	log := hclog.New(&hclog.LoggerOptions{
		Name: "diskcryptd", Level: level, Output: stderr, JSONFormat: jsonLog,
	})
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, log: log, getenv: getenv, batch: batch}
	if len(args) == 0 || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, e, args[1:])
			if err == nil {
				return exitOK
			}
			return report(stderr, err)
		}
	}
	fmt.Fprintf(stderr, "diskcryptd: error: unknown command %q\nhint: run \"diskcryptd help\"\n", args[0])
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: diskcryptd [--verbose|--debug] [--log-json] [-q|--batch-mode] COMMAND [flags] ARGS")
	fmt.Fprintln(w, "\ncommands:")
	cs := commands()
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun \"diskcryptd COMMAND -h\" for a command's flags. Secrets come from --key-file FILE or --key-file - (stdin).")
}

// exitError carries an exit code and an optional hint with an error.
type exitError struct {
	code int
	hint string
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withCode attaches an exit code and a hint for the operator to err.
func withCode(code int, hint string, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, hint: hint, err: err}
}

// usageErrorf is a wrong-parameters error (exit 1).
func usageErrorf(format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

// report prints err in the tool's style and returns its exit code.
func report(w io.Writer, err error) int {
	code, hint := classify(err)
	fmt.Fprintf(w, "diskcryptd: error: %v\n", err)
	if hint != "" {
		fmt.Fprintf(w, "hint: %s\n", hint)
	}
	return code
}

// classify maps an error to an exit code and hint: an explicit exitError first, then the
// sentinel errors of the packages below.
func classify(err error) (int, string) {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code, ee.hint
	}
	for _, m := range errorMap() {
		if errors.Is(err, m.err) {
			return m.code, m.hint
		}
	}
	return exitUsage, ""
}
