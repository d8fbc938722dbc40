package clevis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/internal/tangtest"
	"github.com/diskcryptd/diskcryptd/tang"
)

// silentServer accepts TCP connections on 127.0.0.1 and never answers: a hung Tang
// server. It returns its URL.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				<-done
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { l.Close(); close(done) })
	return "http://" + l.Addr().String()
}

// settled waits until the number of goroutines is at most want, and returns it.
func settled(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 500 && n > want; i++ {
		time.Sleep(10 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// TestSSSLeavesNoGoroutine: an sss pin that reaches its threshold while another
// share waits on a hung Tang server, and one whose context is cancelled while every
// share waits, return with every share's goroutine (and its HTTP request) ended.
func TestSSSLeavesNoGoroutine(t *testing.T) {
	srv := tangtest.Start(t)
	hung := silentServer(t)
	pins := testPins(t)
	hc, err := tang.NewHTTPClient("")
	if err != nil {
		t.Fatal(err)
	}
	pins.Tang.HTTP = hc
	pins.Tang.Timeout = time.Hour // only the cancel may end the hung request
	pins.Tang.Attempts = 1
	ctx := context.Background()
	live, err := pins.Encrypt(ctx, "tang", json.RawMessage(tangCfg(srv)), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	// A share bound to the live server's keys, but sent to the hung server.
	lj, err := ParseJWE([]byte(live))
	if err != nil {
		t.Fatal(err)
	}
	adv, err := tang.ParseKeys(lj.Clevis.Tang.Adv)
	if err != nil {
		t.Fatal(err)
	}
	hungShare := func(pt []byte) string {
		s, err := encryptTangWith(hung, adv, pt)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// sss t=1 over (hung, live): the live share reaches the threshold.
	poly := fixedPolynomial(1)
	a, _ := poly.point()
	b, _ := poly.point()
	liveShare, err := pins.encryptTang(ctx, json.RawMessage(tangCfg(srv)), b)
	if err != nil {
		t.Fatal(err)
	}
	pb := poly.p.FillBytes(make([]byte, sssBytes))
	mk := func(tt int, shares ...string) *JWE {
		s, err := encryptDir(poly.key(), map[string]any{"pin": "sss", "sss": map[string]any{
			"t": tt, "p": base64.RawURLEncoding.EncodeToString(pb), "jwe": shares}}, []byte("passphrase"))
		if err != nil {
			t.Fatal(err)
		}
		j, err := ParseJWE([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	base := settled(0)
	for _, tc := range []struct {
		name   string
		j      *JWE
		cancel bool
	}{
		{"threshold reached", mk(1, hungShare(a), liveShare), false},
		{"cancelled", mk(2, hungShare(a), hungShare(b)), true},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			pt, err := pins.Decrypt(ctx, tc.j)
			if err == nil && string(pt) != "passphrase" {
				err = fmt.Errorf("decrypted %q", pt)
			}
			errc <- err
		}()
		if tc.cancel {
			time.Sleep(100 * time.Millisecond) // let both requests reach the hung server
			cancel()
		}
		select {
		case err := <-errc:
			if tc.cancel != (err != nil) || (tc.cancel && !errors.Is(err, context.Canceled)) {
				t.Fatalf("%s: %v", tc.name, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: sss decrypt did not return", tc.name)
		}
		// The caller's context stays live (boot goes on): only decryptSSS's own cancel
		// may end the share still waiting on the hung server.
		hc.CloseIdleConnections()
		n := settled(base)
		cancel()
		if n > base {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: %d goroutines left running, %d before:\n%s", tc.name, n, base, buf[:runtime.Stack(buf, true)])
		}
	}
}

// TestRegenRefusesForeignAdv: a server (or a man in the middle of http://) that
// answers GET /adv/{old thumbprint} with its own, validly self-signed advertisement
// is not trusted by regen: the token's old signing key did not sign it.
func TestRegenRefusesForeignAdv(t *testing.T) {
	srv, foreign := tangtest.Start(t), tangtest.Start(t)
	ctx := context.Background()
	pins := testPins(t)
	compact, err := pins.Encrypt(ctx, "tang", json.RawMessage(tangCfg(srv)), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := ParseJWE([]byte(compact))
	if err != nil {
		t.Fatal(err)
	}
	fadv, err := (&tang.Client{}).Adv(ctx, foreign.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	body, err := httpGet(foreign.URL + "/adv")
	if err != nil {
		t.Fatal(err)
	}
	mitm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer mitm.Close()
	j.Clevis.Tang.URL = mitm.URL
	_, err = pins.reencrypt(ctx, j, []byte("secret"), "")
	if !errors.Is(err, tang.ErrUntrusted) {
		t.Fatalf("foreign advertisement signed by %v: %v, want ErrUntrusted", fadv.SigningThumbprints(), err)
	}
	t.Logf("refused: %v", err)
}

func httpGet(u string) ([]byte, error) {
	rsp, err := http.Get(u)
	if err != nil {
		return nil, err
	}
	defer rsp.Body.Close()
	return io.ReadAll(rsp.Body)
}
