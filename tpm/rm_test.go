package tpm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskcryptd/diskcryptd/unlock"
)

// leaveLoaded plays another process on a TPM without a resource manager: it connects,
// starts sessions and creates transient objects, and disconnects without flushing
// them (as systemd-cryptsetup does). swtpm keeps them loaded.
func leaveLoaded(t *testing.T, spec string, sessions, objects int) {
	t.Helper()
	tp, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	for range sessions {
		if _, _, err := tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16); err != nil {
			t.Fatalf("leave a session: %v", err)
		}
	}
	for range objects {
		if _, err := CreatePrimary(testCtx(t), tp, PrimaryECC); err != nil {
			t.Fatalf("leave an object: %v", err)
		}
	}
}

// TestStaleHandlesOnTPMWithoutResourceManager fills swtpm's session and object slots
// from another connection, then unseals: diskcryptd flushes the stale handles and
// retries once. Without the flush this fails with TPM_RC_SESSION_MEMORY or
// TPM_RC_OBJECT_MEMORY.
func TestStaleHandlesOnTPMWithoutResourceManager(t *testing.T) {
	for _, tc := range []struct {
		name              string
		sessions, objects int
	}{
		{"sessions", 3, 0},
		{"objects", 0, 3},
		{"both", 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, tp := openSwtpm(t)
			tp.Close()
			ctx := testCtx(t)
			p, err := NewProtector(Config{Device: spec, PCRs: []int{7}, EnrollWithPIN: true,
				PIN: func(context.Context, string) ([]byte, error) { return []byte("19"), nil }})
			if err != nil {
				t.Fatal(err)
			}
			e, err := p.Enroll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tok := unlock.Token{ID: 0, Type: TypeSystemd, Keyslots: []int{1}, JSON: marshalToken(t, e.Token, 1)}

			leaveLoaded(t, spec, tc.sessions, tc.objects)
			// The same unseal without the flush fails: that is what the flush repairs.
			if err := unsealNoRetry(ctx, spec, e.Token); !errors.Is(err, tpm2.TPMRCSessionMemory) && !errors.Is(err, tpm2.TPMRCObjectMemory) {
				t.Fatalf("with stale handles and no flush: got %v, want TPM_RC_SESSION_MEMORY or TPM_RC_OBJECT_MEMORY", err)
			}
			got, err := p.Unseal(ctx, tok)
			if err != nil {
				t.Fatalf("unseal with stale handles left by another client: %v", err)
			}
			if string(got) != string(e.Passphrase) {
				t.Fatal("unsealed a different passphrase")
			}
		})
	}
}

// unsealNoRetry unseals a token the plain way, without flushing stale handles.
func unsealNoRetry(ctx context.Context, spec string, tok map[string]any) error {
	tp, err := Open(spec)
	if err != nil {
		return err
	}
	defer tp.Close()
	st, err := ParseSystemdToken(mustJSON(tok))
	if err != nil {
		return err
	}
	s, err := st.Sealed()
	if err != nil {
		return err
	}
	parent, err := CreatePrimary(ctx, tp, PrimaryECC)
	if err != nil {
		return err
	}
	defer parent.Close(tp)
	_, err = Unseal(ctx, tp, parent, s, PINAuthValue([]byte("19"), nil))
	return err
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestResourceManagerDetection: only transports known to reach a raw TPM flush.
func TestResourceManagerDetection(t *testing.T) {
	for _, tc := range []struct {
		t    transport.TPM
		want bool // without a resource manager
	}{
		{&streamTPM{name: "/dev/tpmrm0", rm: isResourceManagerDevice("/dev/tpmrm0")}, false},
		{&streamTPM{name: "/dev/tpm0", rm: isResourceManagerDevice("/dev/tpm0")}, true},
		{&streamTPM{name: "/run/swtpm/sock", stream: true}, true},
		{&busRecorder{}, false}, // unknown transports are assumed to have one
	} {
		if got := withoutResourceManager(tc.t); got != tc.want {
			t.Errorf("%T %+v: without resource manager = %v, want %v", tc.t, tc.t, got, tc.want)
		}
	}
}

// TestOpenRetriesBusy: a raw TPM device answers a second opener EBUSY; the open is
// retried until the holder lets go, or the context ends.
func TestOpenRetriesBusy(t *testing.T) {
	busy := 0
	open := func() (transport.TPMCloser, error) {
		if busy < 3 {
			busy++
			return nil, &os.PathError{Op: "open", Path: "/dev/tpm0", Err: syscall.EBUSY}
		}
		return &streamTPM{name: "/dev/tpm0"}, nil
	}
	if tp, err := retryBusy(testCtx(t), open); err != nil || tp == nil || busy != 3 {
		t.Fatalf("got %v, %v after %d EBUSY", tp, err, busy)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	busy = 0
	if _, err := retryBusy(ctx, open); !errors.Is(err, syscall.EBUSY) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: got %v", err)
	}
	if _, err := retryBusy(testCtx(t), func() (transport.TPMCloser, error) { return nil, os.ErrNotExist }); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("other errors are returned at once: got %v", err)
	}
}
