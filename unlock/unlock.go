package unlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ErrLocked is wrapped by the error Unlock returns when no token opened the volume.
var ErrLocked = errors.New("unlock: no token opened the volume")

// KeyslotOpener tries passphrase on keyslots and, when one accepts it, keeps the volume
// key it recovers (the caller owns it). It returns an error when none accepts. It must
// not retain passphrase: Unlock wipes it when KeyslotOpener returns.
type KeyslotOpener func(ctx context.Context, passphrase []byte, keyslots []int) error

// Attempt is what happened to one token.
type Attempt struct {
	// Token is the token tried.
	Token Token
	// Protector names the protector that claimed the token, or "" if none did.
	Protector string
	// Err is why the token did not open the volume; nil for the winner.
	Err error
	// Duration is how long the attempt took.
	Duration time.Duration
}

// Report lists the attempts Unlock made, in order.
type Report struct {
	Attempts []Attempt
}

// Winner returns the attempt that opened the volume, or nil.
func (r *Report) Winner() *Attempt {
	for i := range r.Attempts {
		if r.Attempts[i].Err == nil {
			return &r.Attempts[i]
		}
	}
	return nil
}

// LockedError is returned when no token opened the volume. It wraps ErrLocked and
// carries the report so callers can say, per token, why it failed.
type LockedError struct {
	Report *Report
}

func (e *LockedError) Error() string {
	if len(e.Report.Attempts) == 0 {
		return "volume has no token any protector can use; unlock it with a passphrase or recovery key (--key-file)"
	}
	var b strings.Builder
	b.WriteString("no token opened the volume:")
	for _, a := range e.Report.Attempts {
		fmt.Fprintf(&b, " token %d (%s): %v;", a.Token.ID, a.Token.Type, a.Err)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Unwrap lets errors.Is find ErrLocked and the per-token causes.
func (e *LockedError) Unwrap() []error {
	errs := []error{ErrLocked}
	for _, a := range e.Report.Attempts {
		if a.Err != nil {
			errs = append(errs, a.Err)
		}
	}
	return errs
}

// Unlocker tries a volume's tokens with its protectors.
//
// Tokens are tried one at a time in the order given (a PIN prompt or a TPM is a single
// resource); for each token, the protectors in order until one claims it. A protector
// that returns ErrNotMine passes the token to the next.
type Unlocker struct {
	// Protectors are asked in order.
	Protectors []Protector
	// TokenTimeout bounds each token's attempt (unseal plus keyslot open); 0 means
	// only the caller's context bounds it.
	TokenTimeout time.Duration
	// Logger receives one line per attempt; never a secret. Nil means no logging.
	Logger hclog.Logger
}

// Unlock tries tokens until one yields a passphrase that open accepts. It returns the
// report of every attempt; on failure the error is a *LockedError (wrapping ErrLocked),
// or the context's error if ctx ended.
func (u *Unlocker) Unlock(ctx context.Context, tokens []Token, open KeyslotOpener) (*Report, error) {
	log := u.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	rep := &Report{}
	for _, tok := range tokens {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		start := time.Now()
		name, err := u.try(ctx, tok, open)
		a := Attempt{Token: tok, Protector: name, Err: err, Duration: time.Since(start)}
		rep.Attempts = append(rep.Attempts, a)
		if err == nil {
			log.Info("token opened volume", "token", tok.ID, "type", tok.Type, "protector", name, "duration", a.Duration)
			return rep, nil
		}
		log.Warn("token did not open volume", "token", tok.ID, "type", tok.Type, "protector", name, "error", err)
	}
	return rep, &LockedError{Report: rep}
}

func (u *Unlocker) try(ctx context.Context, tok Token, open KeyslotOpener) (string, error) {
	if u.TokenTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, u.TokenTimeout)
		defer cancel()
	}
	for _, p := range u.Protectors {
		pass, err := p.Unseal(ctx, tok)
		if errors.Is(err, ErrNotMine) {
			continue
		}
		if err != nil {
			return p.Name(), fmt.Errorf("%s: %w", p.Name(), err)
		}
		err = open(ctx, pass, tok.Keyslots)
		clear(pass)
		if err != nil {
			return p.Name(), fmt.Errorf("%s: secret from token did not open keyslots %v: %w", p.Name(), tok.Keyslots, err)
		}
		return p.Name(), nil
	}
	return "", fmt.Errorf("%w: no protector handles token type %q", ErrNotMine, tok.Type)
}
