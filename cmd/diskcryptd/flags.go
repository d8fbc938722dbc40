package main

import (
	"errors"
	"flag"
	"fmt"
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

// readKeyFile reads a passphrase or key file the way cryptsetup does with --key-file:
// the whole content, byte for byte (no newline stripped); "-" reads standard input.
// The caller wipes the result.
func readKeyFile(e *env, path string) ([]byte, error) {
	if path == "" {
		return nil, usageErrorf("a key is needed: pass --key-file FILE (or --key-file - for standard input); secrets are never taken from the command line")
	}
	r := e.stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("key file: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := luks2.ReadKeyFile(r)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, usageErrorf("key file %s is empty", path)
	}
	return b, nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }
