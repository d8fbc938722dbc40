package tang

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
)

// ErrBadPoint is returned for a point that is not on the expected curve.
var ErrBadPoint = errors.New("tang: point is not on the curve")

// ecmr is the blinding state of one McCallum-Relyea exchange: the client's
// ephemeral scalar e and the server exchange key S it is bound to.
type ecmr struct {
	curve  elliptic.Curve
	e      []byte // ephemeral scalar, wiped by done
	server *ecdsa.PublicKey
}

// newECMR draws the client's ephemeral scalar on server's curve.
func newECMR(server *ecdsa.PublicKey) (*ecmr, error) {
	if server == nil || server.Curve == nil || !onCurve(server.Curve, server.X, server.Y) {
		return nil, fmt.Errorf("exchange key: %w", ErrBadPoint)
	}
	k, err := randScalar(server.Curve)
	if err != nil {
		return nil, err
	}
	return &ecmr{curve: server.Curve, e: k, server: server}, nil
}

func randScalar(c elliptic.Curve) ([]byte, error) {
	n := c.Params().N
	size := (n.BitLen() + 7) / 8
	for {
		k, err := rand.Int(rand.Reader, n)
		if err != nil {
			return nil, fmt.Errorf("tang: random scalar: %w", err)
		}
		if k.Sign() > 0 {
			out := k.FillBytes(make([]byte, size))
			wipeInts(k)
			return out, nil
		}
	}
}

func onCurve(c elliptic.Curve, x, y *big.Int) bool {
	if x == nil || y == nil {
		return false
	}
	p := c.Params().P
	if x.Sign() < 0 || y.Sign() < 0 || x.Cmp(p) >= 0 || y.Cmp(p) >= 0 {
		return false
	}
	return c.IsOnCurve(x, y)
}

// blind returns X = C + e·G, where C is the JWE's ephemeral public key.
func (m *ecmr) blind(c *ecdsa.PublicKey) (*big.Int, *big.Int, error) {
	if c == nil || c.Curve == nil || c.Curve.Params().Name != m.curve.Params().Name || !onCurve(m.curve, c.X, c.Y) {
		return nil, nil, fmt.Errorf("epk: %w", ErrBadPoint)
	}
	ex, ey := m.curve.ScalarBaseMult(m.e)
	x, y := m.curve.Add(c.X, c.Y, ex, ey)
	if x.Sign() == 0 && y.Sign() == 0 {
		return nil, nil, fmt.Errorf("blinded key is the point at infinity: %w", ErrBadPoint)
	}
	return x, y, nil
}

// unblind returns the x coordinate of Z = Y - e·S, padded to the curve's size:
// Y = s·(C + e·G) is the server's answer, so Z = s·C, the ECDH-ES shared secret of
// the JWE (RFC 7518, 4.6.2). The caller wipes the result.
func (m *ecmr) unblind(yx, yy *big.Int) ([]byte, error) {
	if !onCurve(m.curve, yx, yy) {
		return nil, fmt.Errorf("server answer: %w", ErrBadPoint)
	}
	tx, ty := m.curve.ScalarMult(m.server.X, m.server.Y, m.e)
	// Subtract: add the negation (x, p - y).
	nty := new(big.Int).Sub(m.curve.Params().P, ty)
	nty.Mod(nty, m.curve.Params().P)
	zx, zy := m.curve.Add(yx, yy, tx, nty)
	// e·S and Z are as secret as the key: with either and the answer on the wire,
	// anyone derives the content key.
	defer wipeInts(tx, ty, nty, zx, zy)
	if zx.Sign() == 0 && zy.Sign() == 0 {
		return nil, fmt.Errorf("shared secret is the point at infinity: %w", ErrBadPoint)
	}
	size := (m.curve.Params().BitSize + 7) / 8
	return zx.FillBytes(make([]byte, size)), nil
}

// wipeInts zeroes the words of each big.Int (SetInt64(0) alone keeps them).
func wipeInts(v ...*big.Int) {
	for _, n := range v {
		if n != nil {
			clear(n.Bits())
			n.SetInt64(0)
		}
	}
}

// done wipes the ephemeral scalar.
func (m *ecmr) done() { clear(m.e) }
