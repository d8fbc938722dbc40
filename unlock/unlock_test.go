package unlock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// fakeSlots stands in for a LUKS2 volume's keyslots: which passphrase opens which slot.
type fakeSlots map[int]string

func (f fakeSlots) open(_ context.Context, pass []byte, slots []int) error {
	for _, s := range slots {
		if f[s] == string(pass) {
			return nil
		}
	}
	return errors.New("no keyslot accepts this key")
}

// staticProtector claims one token type and returns a fixed passphrase or error.
type staticProtector struct {
	typ, pass string
	err       error
	delay     time.Duration
}

func (p staticProtector) Name() string { return "static-" + p.typ }
func (p staticProtector) Unseal(ctx context.Context, tok Token) ([]byte, error) {
	if tok.Type != p.typ {
		return nil, fmt.Errorf("%w: type %s", ErrNotMine, tok.Type)
	}
	if p.delay > 0 {
		select {
		case <-time.After(p.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if p.err != nil {
		return nil, p.err
	}
	return []byte(p.pass), nil
}

var errSealed = errors.New("pcr policy mismatch")

func TestUnlockOrder(t *testing.T) {
	slots := fakeSlots{0: "pw", 1: "tpm-secret", 2: "kms-secret"}
	tests := []struct {
		name       string
		protectors []Protector
		tokens     []Token
		winner     int // token ID, -1 for locked
		attempts   int
		wantErr    error
	}{
		{
			name:       "first token wins",
			protectors: []Protector{staticProtector{typ: "a", pass: "tpm-secret"}},
			tokens:     []Token{{ID: 0, Type: "a", Keyslots: []int{1}}},
			winner:     0, attempts: 1,
		},
		{
			name:       "failing token falls back to next",
			protectors: []Protector{staticProtector{typ: "a", err: errSealed}, staticProtector{typ: "b", pass: "kms-secret"}},
			tokens:     []Token{{ID: 0, Type: "a", Keyslots: []int{1}}, {ID: 3, Type: "b", Keyslots: []int{2}}},
			winner:     3, attempts: 2,
		},
		{
			name:       "wrong secret for bound slot",
			protectors: []Protector{staticProtector{typ: "a", pass: "kms-secret"}},
			tokens:     []Token{{ID: 0, Type: "a", Keyslots: []int{1}}},
			winner:     -1, attempts: 1, wantErr: ErrLocked,
		},
		{
			name:       "unknown token type",
			protectors: []Protector{staticProtector{typ: "a", pass: "tpm-secret"}},
			tokens:     []Token{{ID: 0, Type: "x", Keyslots: []int{1}}},
			winner:     -1, attempts: 1, wantErr: ErrNotMine,
		},
		{
			name:       "protector error is reported",
			protectors: []Protector{staticProtector{typ: "a", err: errSealed}},
			tokens:     []Token{{ID: 0, Type: "a", Keyslots: []int{1}}},
			winner:     -1, attempts: 1, wantErr: errSealed,
		},
		{
			name:       "token timeout moves on",
			protectors: []Protector{staticProtector{typ: "slow", pass: "tpm-secret", delay: time.Hour}, staticProtector{typ: "b", pass: "kms-secret"}},
			tokens:     []Token{{ID: 0, Type: "slow", Keyslots: []int{1}}, {ID: 1, Type: "b", Keyslots: []int{2}}},
			winner:     1, attempts: 2,
		},
		{
			name:     "no tokens",
			winner:   -1,
			wantErr:  ErrLocked,
			attempts: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := &Unlocker{Protectors: tc.protectors, TokenTimeout: 50 * time.Millisecond}
			rep, err := u.Unlock(context.Background(), tc.tokens, slots.open)
			if len(rep.Attempts) != tc.attempts {
				t.Fatalf("attempts = %d, want %d", len(rep.Attempts), tc.attempts)
			}
			if tc.winner < 0 {
				if err == nil || rep.Winner() != nil {
					t.Fatalf("unlocked, want locked")
				}
				if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrLocked) {
					t.Fatalf("err = %v, want %v and ErrLocked", err, tc.wantErr)
				}
				var le *LockedError
				if !errors.As(err, &le) {
					t.Fatalf("err is %T, want *LockedError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w := rep.Winner(); w == nil || w.Token.ID != tc.winner {
				t.Fatalf("winner = %+v, want token %d", w, tc.winner)
			}
		})
	}
}

func TestUnlockCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	u := &Unlocker{Protectors: []Protector{staticProtector{typ: "a", pass: "x"}}}
	_, err := u.Unlock(ctx, []Token{{ID: 0, Type: "a"}}, fakeSlots{}.open)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// TestNoSecretInLogs plants a canary passphrase and checks no log line carries it,
// whether the token opens the volume or not.
func TestNoSecretInLogs(t *testing.T) {
	const canary = "CANARY-7f3a9c1e-secret"
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace})
	u := &Unlocker{Logger: log, Protectors: []Protector{staticProtector{typ: "a", pass: canary}}}
	u.Unlock(context.Background(), []Token{{ID: 0, Type: "a", Keyslots: []int{0}}}, fakeSlots{0: canary}.open)
	_, err := u.Unlock(context.Background(), []Token{{ID: 0, Type: "a", Keyslots: []int{0}}}, fakeSlots{0: "other"}.open)
	if buf.Len() == 0 {
		t.Fatal("no log output at all")
	}
	if strings.Contains(buf.String(), canary) || strings.Contains(err.Error(), canary) {
		t.Fatalf("canary leaked:\n%s\n%v", buf.String(), err)
	}
}

func TestRecoveryKey(t *testing.T) {
	format := regexp.MustCompile(`^[cbdefghijklnrtuv]{8}(-[cbdefghijklnrtuv]{8}){7}$`)
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		e, err := NewRecoveryKey()
		if err != nil {
			t.Fatal(err)
		}
		k := string(e.Passphrase)
		if !format.MatchString(k) {
			t.Fatalf("recovery key %q not in systemd's format", k)
		}
		if seen[k] {
			t.Fatal("repeated recovery key")
		}
		seen[k] = true
		if e.Token["type"] != RecoveryTokenType {
			t.Fatalf("token type %v", e.Token["type"])
		}
		typed := strings.ToUpper(strings.ReplaceAll(k, "-", "")) + "\n"
		got, err := ParseRecoveryKey([]byte(typed))
		if err != nil || string(got) != k {
			t.Fatalf("ParseRecoveryKey(%q) = %q, %v; want %q", typed, got, err, k)
		}
	}
	for _, bad := range []string{"", "abc", strings.Repeat("c", 63), strings.Repeat("a", 64), strings.Repeat("c", 65)} {
		if _, err := ParseRecoveryKey([]byte(bad)); !errors.Is(err, ErrRecoveryKeyFormat) {
			t.Errorf("ParseRecoveryKey(%q) err = %v", bad, err)
		}
	}
}
