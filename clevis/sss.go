package clevis

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"math/big"
)

// sssBytes is the size of clevis's sss prime, coefficients and key: 32 bytes.
const sssBytes = 32

// parsePrime decodes and checks an sss prime: 32 bytes, top byte non-zero, prime.
func parsePrime(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: sss p is not base64url", ErrMalformed)
	}
	if len(b) != sssBytes || b[0] == 0 {
		return nil, fmt.Errorf("%w: sss p has %d bytes (want a %d-bit prime)", ErrMalformed, len(b), sssBytes*8)
	}
	p := new(big.Int).SetBytes(b)
	if !p.ProbablyPrime(20) {
		return nil, fmt.Errorf("%w: sss p is not prime", ErrMalformed)
	}
	return p, nil
}

// newSafePrime returns a random safe prime p = 2q+1 of 256 bits, as clevis's
// BN_generate_prime_ex(p, 256, safe=1).
func newSafePrime() (*big.Int, error) {
	for {
		q, err := rand.Prime(rand.Reader, sssBytes*8-1)
		if err != nil {
			return nil, fmt.Errorf("clevis: sss prime: %w", err)
		}
		p := new(big.Int).Lsh(q, 1)
		p.Add(p, big.NewInt(1))
		if p.BitLen() == sssBytes*8 && p.ProbablyPrime(20) {
			return p, nil
		}
	}
}

// polynomial is a random polynomial of degree t-1 modulo p; e[0] is the secret.
type polynomial struct {
	p *big.Int
	e []*big.Int
}

func newPolynomial(t int) (*polynomial, error) {
	p, err := newSafePrime()
	if err != nil {
		return nil, err
	}
	poly := &polynomial{p: p}
	for range t {
		e, err := rand.Int(rand.Reader, p)
		if err != nil {
			return nil, fmt.Errorf("clevis: sss coefficient: %w", err)
		}
		poly.e = append(poly.e, e)
	}
	return poly, nil
}

// key is the secret e[0] as 32 bytes.
func (poly *polynomial) key() []byte { return poly.e[0].FillBytes(make([]byte, sssBytes)) }

// point returns a share x||y at a random x, y = sum e[i] x^i mod p.
func (poly *polynomial) point() ([]byte, error) {
	// x in [1, p): the share at x = 0 is the secret itself.
	x, err := rand.Int(rand.Reader, new(big.Int).Sub(poly.p, big.NewInt(1)))
	if err != nil {
		return nil, fmt.Errorf("clevis: sss point: %w", err)
	}
	x.Add(x, big.NewInt(1))
	y := new(big.Int)
	xi := big.NewInt(1)
	tmp := new(big.Int)
	for _, e := range poly.e {
		tmp.Mul(e, xi)
		y.Add(y, tmp)
		y.Mod(y, poly.p)
		xi.Mul(xi, x)
		xi.Mod(xi, poly.p)
	}
	out := make([]byte, 2*sssBytes)
	x.FillBytes(out[:sssBytes])
	y.FillBytes(out[sssBytes:])
	wipeInts(y, tmp)
	return out, nil
}

// wipeInts zeroes the words of each big.Int and sets it to 0: SetInt64(0) alone only
// shortens the slice and leaves the words in memory.
func wipeInts(v ...*big.Int) {
	for _, n := range v {
		if n == nil {
			continue
		}
		clear(n.Bits())
		n.SetInt64(0)
	}
}

// wipe zeroes the coefficients.
func (poly *polynomial) wipe() { wipeInts(poly.e...) }

// recoverSecret interpolates the points (each x||y of len(p) bytes) at 0 modulo p and
// returns the secret as 32 bytes. Points outside [0,p) or sharing an x are refused.
func recoverSecret(p *big.Int, points [][]byte) ([]byte, error) {
	xs := make([]*big.Int, len(points))
	ys := make([]*big.Int, len(points))
	defer func() { wipeInts(ys...) }()
	for i, pt := range points {
		if len(pt) != 2*sssBytes {
			return nil, fmt.Errorf("%w: sss share %d has %d bytes (want %d)", ErrMalformed, i, len(pt), 2*sssBytes)
		}
		xs[i] = new(big.Int).SetBytes(pt[:sssBytes])
		ys[i] = new(big.Int).SetBytes(pt[sssBytes:])
		if xs[i].Cmp(p) >= 0 || ys[i].Cmp(p) >= 0 {
			return nil, fmt.Errorf("%w: sss share %d lies outside the field", ErrMalformed, i)
		}
		if xs[i].Sign() == 0 {
			// Never written (point draws x >= 1); a share at 0 would be the key itself.
			return nil, fmt.Errorf("%w: sss share %d is at x = 0", ErrMalformed, i)
		}
		for j := range i {
			if xs[j].Cmp(xs[i]) == 0 {
				return nil, fmt.Errorf("%w: sss shares %d and %d are the same point", ErrMalformed, j, i)
			}
		}
	}
	k := new(big.Int)
	acc := new(big.Int)
	tmp := new(big.Int)
	for i := range xs {
		acc.SetInt64(1)
		for j := range xs {
			if i == j {
				continue
			}
			// acc *= (0 - xj) / (xi - xj)
			tmp.Neg(xs[j])
			acc.Mul(acc, tmp)
			acc.Mod(acc, p)
			tmp.Sub(xs[i], xs[j])
			tmp.Mod(tmp, p)
			if tmp.ModInverse(tmp, p) == nil {
				return nil, fmt.Errorf("%w: sss shares are not invertible", ErrMalformed)
			}
			acc.Mul(acc, tmp)
			acc.Mod(acc, p)
		}
		acc.Mul(acc, ys[i])
		k.Add(k, acc)
		k.Mod(k, p)
	}
	out := k.FillBytes(make([]byte, sssBytes))
	wipeInts(k, acc, tmp)
	return out, nil
}
