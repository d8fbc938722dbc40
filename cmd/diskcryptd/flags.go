package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/diskcryptd/diskcryptd/luks2"
)

// flagSet is a flag.FlagSet that, like cryptsetup, accepts flags before and after the
// positional arguments.
type flagSet struct {
	*flag.FlagSet
	usage string
}

func newFlags(e *env, name, usage string) *flagSet {
	fs := flag.NewFlagSet("diskcryptd "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	f := &flagSet{FlagSet: fs, usage: usage}
	// Accepted by every command, as cryptsetup accepts them wherever it takes flags.
	fs.BoolVar(&e.batch, "batch-mode", e.batch, "do not ask for confirmation (as cryptsetup's --batch-mode)")
	fs.BoolVar(&e.batch, "q", e.batch, "alias of --batch-mode")
	fs.BoolVar(&e.insecureKeyFile, "allow-insecure-key-file", e.insecureKeyFile, "read key files that group or others may access")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: diskcryptd %s %s\n", name, usage)
		fs.PrintDefaults()
	}
	return f
}

// parse parses args, interleaving flags and positional arguments, and checks that
// there are between min and max positional ones (max < 0: no limit).
func (f *flagSet) parse(args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, &exitError{code: exitOK, err: err}
			}
			return nil, usageErrorf("%v", err)
		}
		args = f.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		return nil, usageErrorf("wrong number of arguments; usage: %s %s", f.Name(), f.usage)
	}
	return pos, nil
}

// ErrInsecureKeyFile is returned for a key file that group or others may read or
// write (as systemd-cryptenroll warns about); --allow-insecure-key-file overrides.
var ErrInsecureKeyFile = errors.New("key file is accessible by group or others")

// readKeyFile reads a passphrase or key file the way cryptsetup does with --key-file:
// the whole content, byte for byte (no newline stripped); "-" reads standard input.
// A regular file that group or others may access is refused unless
// --allow-insecure-key-file is given. The caller wipes the result.
func readKeyFile(e *env, path string) ([]byte, error) {
	if path == "" {
		return nil, usageErrorf("a key is needed: pass --key-file FILE (or --key-file - for standard input); secrets are never taken from the command line")
	}
	r := e.stdin
	if path != "-" {
		f, err := openSecretFile(e, path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := readSecret(r, luks2.MaxKeyFileSize)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, usageErrorf("key file %s is empty", path)
	}
	return b, nil
}

// ErrSecretTooLarge is returned by readSecret for input beyond its limit.
var ErrSecretTooLarge = errors.New("key file too large")

// readSecret reads r whole, up to limit bytes, into one buffer it owns: when the buffer
// must grow, the old one is wiped, so no copy of the secret is left behind in freed
// memory (io.ReadAll would leave each smaller buffer unwiped). The caller wipes the
// result.
func readSecret(r io.Reader, limit int) ([]byte, error) {
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				clear(buf)
				return nil, fmt.Errorf("%w: more than %d bytes", ErrSecretTooLarge, limit)
			}
			bigger := make([]byte, len(buf), 2*cap(buf))
			copy(bigger, buf)
			clear(buf[:cap(buf)])
			buf = bigger
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			clear(buf[:cap(buf)])
			return nil, fmt.Errorf("reading key file: %w", err)
		}
	}
	if len(buf) > limit {
		clear(buf[:cap(buf)])
		return nil, fmt.Errorf("%w: more than %d bytes", ErrSecretTooLarge, limit)
	}
	return buf, nil
}

// openSecretFile opens a file holding a secret (key file, PIN file) and checks, on the
// opened descriptor, that only its owner may access it. Errors are usage errors (exit
// 1, as cryptsetup's "Failed to open key file"), never device errors.
func openSecretFile(e *env, path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, withCode(exitUsage, "", fmt.Errorf("key file: %w", err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, withCode(exitUsage, "", fmt.Errorf("key file: %w", err))
	}
	// Pipes and character devices (process substitution, /dev/stdin) carry no
	// meaningful mode; regular files must be private to their owner.
	if fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 && !e.insecureKeyFile {
		f.Close()
		return nil, withCode(exitUsage,
			fmt.Sprintf("chmod 600 %s, or pass --allow-insecure-key-file", path),
			fmt.Errorf("%s: %w (mode %#o)", path, ErrInsecureKeyFile, fi.Mode().Perm()))
	}
	return f, nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }
