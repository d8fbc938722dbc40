package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/reencrypt"
)

// cmdReencrypt rotates a volume key (re-encrypting all data) or resumes a
// rotation, offline, compatible with cryptsetup reencrypt.
func cmdReencrypt(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "reencrypt", "--key-file FILE [--resume-only | --encrypt --reduce-device-size SIZE] [--resilience checksum|journal] [--hotzone-size SIZE] [--json] DEVICE")
	keyFile := f.String("key-file", "", "passphrase or key file of a keyslot (- for standard input)")
	resume := f.Bool("resume-only", false, "finish a re-encryption in progress (started by diskcryptd or cryptsetup)")
	resilience := f.String("resilience", "checksum", "hotzone protection: checksum or journal")
	hotzone := f.String("hotzone-size", "", "largest hotzone, e.g. 64M (default 64 MiB; journal: also the journal size)")
	jsonOut := f.Bool("json", false, "print progress as JSON lines on standard output")
	drop := f.Bool("drop-other-keyslots", false, "allow rotation when other keyslots exist (they are removed; re-enroll them afterwards)")
	encrypt := f.Bool("encrypt", false, "encrypt the data on DEVICE in place (cryptsetup's --encrypt format); needs --reduce-device-size")
	reduce := f.String("reduce-device-size", "", "with --encrypt: free space at the end of the device, twice the new header (e.g. 32M); the data must end before it")
	sectorSize := f.Int("sector-size", 512, "with --encrypt: encryption sector size, 512 or 4096")
	var kdf kdfFlags
	kdf.register(f)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	dev := pos[0]
	if *resilience != "checksum" && *resilience != "journal" {
		return usageErrorf("--resilience must be checksum or journal")
	}
	var hz int64
	if *hotzone != "" {
		if hz, err = parseSize(*hotzone); err != nil || hz <= 0 {
			return usageErrorf("--hotzone-size %q: want a size such as 64M", *hotzone)
		}
	}
	pass, err := readKeyFile(e, *keyFile)
	if err != nil {
		return err
	}
	defer clear(pass)
	fh, size, online, err := openForReencrypt(ctx, dev)
	if err != nil {
		return withCode(exitDevice, "", err)
	}
	defer fh.Close()
	// Hold the device's metadata lock (cryptsetup's) for the whole run: cryptsetup
	// and other diskcryptd commands wait instead of writing the header meanwhile.
	// (An in-place encryption starts without a header: nothing to lock yet.)
	if lv, err := luks2.OpenFile(dev, luks2.ReadWrite); err == nil {
		defer lv.Close()
		release, err := lv.LockMetadata(ctx)
		if err != nil {
			return err
		}
		defer release()
	} else if !*encrypt {
		return err
	}
	prog := newProgressPrinter(e.stdout, *jsonOut)
	o := &reencrypt.Options{
		Keyslot:           luks2.KeyslotOptions{KDF: kdf.options()},
		Resilience:        *resilience,
		HotzoneSize:       hz,
		DropOtherKeyslots: *drop,
		Logger:            e.log.Named("reencrypt"),
		Progress:          prog.report,
		Online:            online,
	}
	if kdf.iterations > 0 {
		// As cryptsetup: forced iterations also skip the digest benchmark.
		o.DigestIterations = 1000
	}
	if *encrypt {
		n, perr := parseSize(*reduce)
		if *reduce == "" || perr != nil || n <= 0 {
			return usageErrorf("--encrypt needs --reduce-device-size SIZE, e.g. 32M (the data must end before the last SIZE bytes)")
		}
		if *sectorSize != 512 && *sectorSize != 4096 {
			return usageErrorf("--sector-size must be 512 or 4096")
		}
		err = reencrypt.Encrypt(ctx, fh, size, n, pass, o, &reencrypt.EncryptOptions{SectorSize: *sectorSize})
	} else if *resume {
		err = reencrypt.Resume(ctx, fh, size, pass, o)
	} else {
		err = reencrypt.Rotate(ctx, fh, size, pass, o)
	}
	prog.end()
	switch {
	case errors.Is(err, reencrypt.ErrInterrupted):
		return withCode(exitUsage, "the volume is consistent; finish with: diskcryptd reencrypt --resume-only --key-file FILE "+dev, err)
	case errors.Is(err, reencrypt.ErrInProgress):
		return withCode(exitBusy, "finish it with: diskcryptd reencrypt --resume-only --key-file FILE "+dev, err)
	case errors.Is(err, reencrypt.ErrUnsupported):
		return withCode(exitDevice, "finish this re-encryption with cryptsetup reencrypt --resume-only", err)
	case errors.Is(err, reencrypt.ErrOtherKeyslots):
		return withCode(exitUsage, "", err)
	case errors.Is(err, reencrypt.ErrTailInUse):
		return withCode(exitDevice, "shrink the filesystem first (resize2fs, btrfs filesystem resize; xfs cannot shrink) so that it ends before the last "+*reduce, err)
	case err != nil:
		return err
	}
	if !*jsonOut && *encrypt {
		fmt.Fprintf(e.stdout, "%s: data encrypted in place\n", dev)
	} else if !*jsonOut && online != nil {
		fmt.Fprintf(e.stdout, "%s: volume key rotated online (mapping %s stayed open), data re-encrypted\n", dev, online.Name)
	} else if !*jsonOut {
		fmt.Fprintf(e.stdout, "%s: volume key rotated, data re-encrypted\n", dev)
	}
	return nil
}

// openExclusive opens an image file, or a block device with O_EXCL so that a
// mounted or mapped device is refused (the rotation is offline).
func openExclusive(path string) (*os.File, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	flag := os.O_RDWR
	if st.Mode()&os.ModeDevice != 0 {
		flag |= unix.O_EXCL
	}
	fh, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, 0, fmt.Errorf("%s is in use (mounted or mapped); re-encryption here is offline only: %w", path, err)
	}
	if err != nil {
		return nil, 0, err
	}
	size, err := fh.Seek(0, io.SeekEnd)
	if err != nil {
		fh.Close()
		return nil, 0, err
	}
	return fh, size, nil
}

// parseSize parses a size as cryptsetup does: a number with an optional unit,
// S (512-byte sectors), K, M, G, T (powers of 1024, optionally "iB"), KB, MB, GB,
// TB (powers of 1000).
func parseSize(s string) (int64, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, err
	}
	mul := map[string]int64{"": 1, "S": 512, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30,
		"T": 1 << 40, "TIB": 1 << 40, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[strings.ToUpper(s[i:])]
	if mul == 0 {
		return 0, fmt.Errorf("unknown unit %q", s[i:])
	}
	if n > (1<<62)/mul {
		return 0, fmt.Errorf("size too large")
	}
	return n * mul, nil
}

// progressPrinter shows progress: a line rewritten in place on a terminal, JSON
// lines with --json, nothing otherwise.
type progressPrinter struct {
	w     io.Writer
	json  bool
	tty   bool
	shown bool
}

func newProgressPrinter(w io.Writer, jsonOut bool) *progressPrinter {
	p := &progressPrinter{w: w, json: jsonOut}
	if f, ok := w.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.tty = true
		}
	}
	return p
}

// progressLine is one --json progress line.
type progressLine struct {
	Done     int64   `json:"done_bytes"`
	Total    int64   `json:"total_bytes"`
	Rate     float64 `json:"bytes_per_second"`
	ETA      float64 `json:"eta_seconds"`
	Finished bool    `json:"finished"`
}

func (p *progressPrinter) report(pr reencrypt.Progress) {
	var rate, eta float64
	if s := pr.Elapsed.Seconds(); s > 0 {
		rate = float64(pr.Done-pr.Resumed) / s
	}
	if rate > 0 {
		eta = float64(pr.Total-pr.Done) / rate
	}
	switch {
	case p.json:
		b, _ := json.Marshal(progressLine{Done: pr.Done, Total: pr.Total, Rate: rate, ETA: eta, Finished: pr.Finished})
		fmt.Fprintf(p.w, "%s\n", b)
	case p.tty:
		pct := 100.0
		if pr.Total > 0 {
			pct = 100 * float64(pr.Done) / float64(pr.Total)
		}
		fmt.Fprintf(p.w, "\rprogress: %5.1f%%, %d of %d MiB, %.0f MiB/s, ETA %s   ", pct, pr.Done>>20, pr.Total>>20, rate/(1<<20),
			(time.Duration(eta) * time.Second).Round(time.Second))
		p.shown = true
	}
}

func (p *progressPrinter) end() {
	if p.shown {
		fmt.Fprintln(p.w)
	}
}
