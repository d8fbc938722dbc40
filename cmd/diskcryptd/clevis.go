package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/clevis"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tang"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// clevisFlags configure clevis tokens (tang, tpm2, sss pins): the Tang client for
// unlock, and the pin and its clevis configuration for enroll.
type clevisFlags struct {
	caFile   string
	timeout  time.Duration
	attempts int
	// enroll and regen
	pin           string
	config        string
	thp           string
	trustFirstUse bool

	once sync.Once
	pins *clevis.Pins
	err  error
}

// register adds the Tang client flags.
func (c *clevisFlags) register(f *flagSet) {
	f.StringVar(&c.caFile, "tang-ca-file", "", "PEM CA certificates for https:// Tang servers (default: the system's)")
	f.DurationVar(&c.timeout, "tang-timeout", 5*time.Second, "deadline of each request to a Tang server")
	f.IntVar(&c.attempts, "tang-attempts", 3, "tries of each request to a Tang server (backoff doubles from 250ms)")
}

// registerEnroll adds the flags of "enroll clevis".
func (c *clevisFlags) registerEnroll(f *flagSet) {
	c.register(f)
	f.StringVar(&c.pin, "pin", "", "clevis pin: tang, tpm2 or sss")
	f.StringVar(&c.config, "config", "", "the pin's clevis configuration JSON, e.g. '{\"url\":\"http://tang\",\"thp\":\"...\"}'")
	f.StringVar(&c.thp, "tang-thumbprint", "", "trust the Tang server whose signing key has this thumbprint (the config's \"thp\")")
	f.BoolVar(&c.trustFirstUse, "trust-first-use", false, "trust a Tang advertisement without a thumbprint, and print what was trusted")
}

// build returns the pins, once: one Tang client (and its HTTP connections) is
// shared by every volume of a command.
func (c *clevisFlags) build(e *env, tpmDevice string) (*clevis.Pins, error) {
	c.once.Do(func() {
		hc, err := tang.NewHTTPClient(c.caFile)
		if err != nil {
			c.err = withCode(exitUsage, "", err)
			return
		}
		c.pins = &clevis.Pins{
			Tang:          &tang.Client{HTTP: hc, Timeout: c.timeout, Attempts: c.attempts, Logger: e.log.Named("tang")},
			TPM2:          &clevis.TPMDevice{Device: tpmDevice},
			TrustFirstUse: c.trustFirstUse,
			Logger:        e.log.Named("clevis"),
			Trusted: func(url, how string, thps []string) {
				if how == "first use" {
					fmt.Fprintf(e.stderr, "diskcryptd: trusted Tang server %s on first use: signing key %s\nhint: compare with the server's keys (jose jwk thp -i DB/KEY.jwk) and pin them with --tang-thumbprint or \"thp\"\n", url, strings.Join(thps, ", "))
					return
				}
				fmt.Fprintf(e.stderr, "diskcryptd: Tang server %s trusted (%s): signing key %s\n", url, how, strings.Join(thps, ", "))
			},
		}
	})
	return c.pins, c.err
}

// protector returns the clevis protector for unlock.
func (c *clevisFlags) protector(e *env, tpmDevice string) (unlock.Protector, error) {
	pins, err := c.build(e, tpmDevice)
	if err != nil {
		return nil, err
	}
	return auditedClevis{&clevis.Protector{Pins: pins}}, nil
}

// auditedClevis is the clevis protector that also says, for the audit log, which pin
// tree (Tang servers, TPM2 PCRs, threshold) a key release went through.
type auditedClevis struct {
	*clevis.Protector
}

var _ daemon.ReleaseDescriber = auditedClevis{}

// DescribeRelease implements daemon.ReleaseDescriber.
func (auditedClevis) DescribeRelease(_ context.Context, tok unlock.Token, r *audit.Record) {
	if s := clevisSummary(tok.JSON); s != "" {
		r.Detail = "clevis " + s
	}
}

// enroller returns the enroller of "enroll clevis".
func (c *clevisFlags) enroller(e *env, tpmDevice string) (unlock.Enroller, error) {
	switch c.pin {
	case "tang", "tpm2", "sss":
	case "":
		return nil, usageErrorf("which pin? pass --pin tang|tpm2|sss and --config JSON")
	default:
		return nil, usageErrorf("unknown clevis pin %q (tang, tpm2, sss)", c.pin)
	}
	if c.config == "" {
		return nil, usageErrorf("pass the pin's clevis configuration: --config JSON")
	}
	cfg := json.RawMessage(c.config)
	if c.thp != "" {
		if c.pin != "tang" {
			return nil, usageErrorf("--tang-thumbprint is for --pin tang; give each sss child its \"thp\" in --config")
		}
		var m map[string]any
		if err := json.Unmarshal(cfg, &m); err != nil {
			return nil, usageErrorf("--config: %v", err)
		}
		m["thp"] = c.thp
		cfg, _ = json.Marshal(m)
	}
	pins, err := c.build(e, tpmDevice)
	if err != nil {
		return nil, err
	}
	return &clevis.Enroller{Pins: pins, Pin: c.pin, Config: cfg}, nil
}

// unlockTestMany recovers the volume keys of several devices in parallel, as serve
// does, sharing one Tang client; it prints one line per device in the order given.
func unlockTestMany(ctx context.Context, e *env, devices []string, u *unlockFlags) error {
	if u.keyFile == "-" {
		return usageErrorf("--key-file - (standard input) serves one device; pass a key file, or unlock the devices one at a time")
	}
	lines := make([]string, len(devices))
	errs := make([]error, len(devices))
	var wg sync.WaitGroup
	for i, dev := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			named := func(err error) error {
				if strings.Contains(err.Error(), dev) {
					return err
				}
				return fmt.Errorf("%s: %w", dev, err)
			}
			v, err := luks2.OpenFile(dev, luks2.ReadOnly)
			if err != nil {
				errs[i] = named(err)
				return
			}
			defer v.Close()
			vk, how, err := recoverKey(ctx, e, v, u)
			if err != nil {
				errs[i] = named(err)
				return
			}
			vk.Wipe()
			lines[i] = fmt.Sprintf("%s: volume key recovered through %s", dev, how)
		}()
	}
	wg.Wait()
	for i := range devices {
		if errs[i] != nil {
			fmt.Fprintf(e.stdout, "%s: locked\n", devices[i])
			continue
		}
		fmt.Fprintln(e.stdout, lines[i])
	}
	return errors.Join(errs...)
}

// clevisSummary renders a clevis token's pin tree for token list, or "" for another
// token or one that does not parse.
func clevisSummary(raw json.RawMessage) string {
	t, err := clevis.ParseToken(raw)
	if err != nil {
		return ""
	}
	return clevis.Describe(t.JWE)
}

// cmdTokenRegen re-binds a volume's clevis tokens after its Tang servers rotated
// their keys (tangd-rotate-keys), trusting a new advertisement only if a key the
// token already trusts, or --tang-thumbprint, signed it. The keyslot and its
// passphrase stay; the token is replaced in one metadata commit.
func cmdTokenRegen(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "token regen", "[--tang-thumbprint THP] [--token-id N] [--tpm2-device DEV] DEVICE")
	id := f.Int("token-id", luks2.AnyToken, "only this token (default: every clevis token with a tang pin)")
	var cf clevisFlags
	cf.register(f)
	f.StringVar(&cf.thp, "tang-thumbprint", "", "also trust a new advertisement signed by the key with this thumbprint")
	var tf tpmFlags
	tf.register(f, false)
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	pins, err := cf.build(e, tf.device)
	if err != nil {
		return err
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	done := 0
	for _, t := range v.Metadata().Tokens {
		if t.Type != clevis.TokenType || (*id != luks2.AnyToken && t.ID != *id) {
			continue
		}
		raw, err := v.ExportToken(t.ID)
		if err != nil {
			return err
		}
		tok, err := clevis.ParseToken(raw)
		if err != nil {
			return fmt.Errorf("token %d: %w", t.ID, err)
		}
		if *id == luks2.AnyToken && !tok.JWE.Uses("tang") {
			continue
		}
		compact, err := pins.Regen(ctx, tok.JWE, cf.thp)
		if err != nil {
			return fmt.Errorf("token %d: %w", t.ID, err)
		}
		obj, err := clevis.TokenJSON(compact)
		if err != nil {
			return err
		}
		slots := make([]string, len(tok.Keyslots))
		for i, s := range tok.Keyslots {
			slots[i] = fmt.Sprint(s)
		}
		obj["keyslots"] = slots
		nb, err := json.Marshal(obj)
		if err != nil {
			return err
		}
		err = v.ReplaceToken(t.ID, nb)
		rec := volumeRecord(audit.KindEnroll, pos[0], v)
		rec.Protector, rec.Keyslots, rec.Token, rec.TokenType = "clevis-regen", tok.Keyslots, audit.TokenID(t.ID), t.Type
		auditEvent(ctx, e, rec, err)
		if err != nil {
			return fmt.Errorf("token %d: %w", t.ID, err)
		}
		fmt.Fprintf(e.stdout, "token %d re-bound: %s\n", t.ID, clevis.Describe(tok.JWE))
		done++
	}
	if done == 0 {
		return withCode(exitUsage, "", fmt.Errorf("%s has no clevis token with a tang pin to re-bind", pos[0]))
	}
	return nil
}
