package tang

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Error is the error of a request to a Tang server: the URL, the operation, and why.
type Error struct {
	// URL is the server's base URL.
	URL string
	// Op is "adv" or "rec".
	Op string
	// Err is the cause.
	Err error
}

// Error says "tang URL: OP: cause".
func (e *Error) Error() string { return fmt.Sprintf("tang %s: %s: %v", e.URL, e.Op, e.Err) }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// ErrStatus is wrapped by errors for an HTTP answer other than 200.
var ErrStatus = errors.New("unexpected HTTP status")

// ErrUnknownKey is wrapped by the error for a 404 answer to GET /adv/{thp} or
// POST /rec/{kid}: the server has no key of that thumbprint.
var ErrUnknownKey = errors.New("the server has no key of that thumbprint")

// maxAnswer bounds a /rec answer (one JWK).
const maxAnswer = 16 << 10

// Client talks to Tang servers. Its zero value is usable: one try per request of at
// most 10 s. One Client shares its HTTP connections across requests and goroutines.
type Client struct {
	// HTTP is the HTTP client; nil means a client of our own with keep-alives.
	HTTP *http.Client
	// Timeout bounds each attempt (default 10 s).
	Timeout time.Duration
	// Attempts is the number of tries of a request (default 1, at most 10).
	Attempts int
	// Backoff is the wait before the second try; it doubles after each failure
	// (default 250 ms).
	Backoff time.Duration
	// Logger gets one line per failed attempt; nil discards.
	Logger hclog.Logger

	httpOnce    sync.Once
	defaultHTTP *http.Client
}

// NewHTTPClient returns an HTTP client for Tang servers with keep-alive connections;
// caFile, if not "", names PEM certificates trusted for https:// URLs instead of the
// system's.
func NewHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // Tang servers are reached directly, as clevis's curl -g does without proxy env in the initramfs
	tr.MaxIdleConnsPerHost = 16
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("tang: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tang: CA file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, CheckRedirect: noRedirects}, nil
}

// noRedirects makes a redirect an answer like any other non-200 one: clevis's curl
// does not follow them, and a Tang URL that sends its caller elsewhere (another
// host, https to http) is a misconfiguration or an attack, not a server to trust.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	c.httpOnce.Do(func() { c.defaultHTTP, _ = NewHTTPClient("") })
	return c.defaultHTTP
}

func (c *Client) log() hclog.Logger {
	if c.Logger == nil {
		return hclog.NewNullLogger()
	}
	return c.Logger
}

// do runs one request with retries and returns the body of a 200 answer.
func (c *Client) do(ctx context.Context, base, op, method, path string, body []byte, limit int64) ([]byte, error) {
	u, err := url.Parse(trimURL(base))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &Error{URL: base, Op: op, Err: errors.New("not an http:// or https:// URL")}
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	attempts := min(max(c.Attempts, 1), 10)
	backoff := c.Backoff
	if backoff <= 0 {
		backoff = 250 * time.Millisecond
	}
	var last error
	tries := 0
	for try := 1; try <= attempts; try++ {
		tries = try
		if try > 1 {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, &Error{URL: base, Op: op, Err: fmt.Errorf("%w (after %d tries, last: %v)", ctx.Err(), try-1, last)}
			case <-t.C:
			}
			backoff *= 2
		}
		b, retry, err := c.once(ctx, timeout, method, trimURL(base)+path, body, limit)
		if err == nil {
			return b, nil
		}
		last = err
		c.log().Debug("tang request failed", "url", base, "op", op, "try", try, "error", err)
		if !retry || ctx.Err() != nil {
			break
		}
	}
	if tries > 1 {
		last = fmt.Errorf("%w (%d tries)", last, tries)
	}
	return nil, &Error{URL: base, Op: op, Err: last}
}

func (c *Client) once(ctx context.Context, timeout time.Duration, method, u string, body []byte, limit int64) ([]byte, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, false, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/jwk+json")
	}
	rsp, err := c.http().Do(req)
	if err != nil {
		return nil, true, err
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(rsp.Body, limit+1))
	if err != nil {
		return nil, true, fmt.Errorf("reading answer: %w", err)
	}
	if rsp.StatusCode == http.StatusNotFound && method == http.MethodPost || rsp.StatusCode == http.StatusNotFound && strings.Contains(u, "/adv/") {
		return nil, false, fmt.Errorf("%w (%w %s)", ErrUnknownKey, ErrStatus, rsp.Status)
	}
	if rsp.StatusCode != http.StatusOK {
		return nil, rsp.StatusCode >= 500, fmt.Errorf("%w %s", ErrStatus, rsp.Status)
	}
	if int64(len(b)) > limit {
		return nil, false, fmt.Errorf("answer larger than %d bytes", limit)
	}
	return b, false, nil
}

// Adv fetches and verifies the advertisement of the server at base. With thp, it asks
// GET /adv/{thp}, which a Tang server also signs with the key thp names even after
// that key was rotated out; trusted are keys the caller already trusts, checked as
// extra signers (see ParseAdv).
func (c *Client) Adv(ctx context.Context, base, thp string, trusted ...Key) (*Adv, error) {
	path := "/adv"
	if thp != "" {
		path += "/" + url.PathEscape(thp)
	}
	b, err := c.do(ctx, base, "adv", http.MethodGet, path, nil, maxAdv)
	if err != nil {
		return nil, err
	}
	a, err := ParseAdv(b, trusted...)
	if err != nil {
		return nil, &Error{URL: base, Op: "adv", Err: err}
	}
	return a, nil
}

// Recover runs the McCallum-Relyea exchange with the server at base for a JWE whose
// ECDH-ES ephemeral public key is epk and whose exchange key is server (thumbprint
// kid). It returns the x coordinate of the ECDH-ES shared secret Z (RFC 7518,
// 4.6.2), which the caller feeds to the Concat KDF and then wipes.
func (c *Client) Recover(ctx context.Context, base, kid string, server, epk *ecdsa.PublicKey) ([]byte, error) {
	fail := func(err error) error { return &Error{URL: base, Op: "rec", Err: err} }
	m, err := newECMR(server)
	if err != nil {
		return nil, fail(err)
	}
	defer m.done()
	x, y, err := m.blind(epk)
	if err != nil {
		return nil, fail(err)
	}
	req, err := json.Marshal(ecJWK{Alg: "ECMR", Crv: server.Curve.Params().Name, Kty: "EC", X: coord(server, x), Y: coord(server, y)})
	if err != nil {
		return nil, fail(err)
	}
	b, err := c.do(ctx, base, "rec", http.MethodPost, "/rec/"+url.PathEscape(kid), req, maxAnswer)
	if err != nil {
		return nil, err
	}
	yx, yy, err := ParseRecAnswer(b, server.Curve.Params().Name)
	if err != nil {
		return nil, fail(err)
	}
	z, err := m.unblind(yx, yy)
	if err != nil {
		return nil, fail(err)
	}
	return z, nil
}

type ecJWK struct {
	Alg string `json:"alg,omitempty"`
	Crv string `json:"crv"`
	Kty string `json:"kty"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func coord(k *ecdsa.PublicKey, v *big.Int) string {
	size := (k.Curve.Params().BitSize + 7) / 8
	return base64.RawURLEncoding.EncodeToString(v.FillBytes(make([]byte, size)))
}

// ParseRecAnswer parses a /rec answer: an EC JWK on curve crv. It returns the point,
// checked to be on the curve.
func ParseRecAnswer(b []byte, crv string) (*big.Int, *big.Int, error) {
	if len(b) > maxAnswer {
		return nil, nil, fmt.Errorf("answer of %d bytes", len(b))
	}
	var k ecJWK
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, nil, fmt.Errorf("answer is not a JWK: %w", err)
	}
	if k.Kty != "EC" || k.Crv != crv {
		return nil, nil, fmt.Errorf("answer is a %s/%s key, want EC/%s", k.Kty, k.Crv, crv)
	}
	curve := curveByName(crv)
	if curve == nil {
		return nil, nil, fmt.Errorf("curve %q", crv)
	}
	size := (curve.Params().BitSize + 7) / 8
	xb, err1 := base64.RawURLEncoding.DecodeString(k.X)
	yb, err2 := base64.RawURLEncoding.DecodeString(k.Y)
	if err1 != nil || err2 != nil || len(xb) != size || len(yb) != size {
		return nil, nil, fmt.Errorf("answer coordinates are not %d-byte base64url", size)
	}
	x, y := new(big.Int).SetBytes(xb), new(big.Int).SetBytes(yb)
	if !onCurve(curve, x, y) {
		return nil, nil, fmt.Errorf("answer: %w", ErrBadPoint)
	}
	return x, y, nil
}
