package tang

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"math/big"
	"testing"
)

// TestECMRRoundTrip: with the server's side computed from its private key, the
// exchange yields the ECDH-ES shared secret of the JWE's ephemeral key and the
// server's exchange key, on every curve a Tang server uses.
func TestECMRRoundTrip(t *testing.T) {
	for _, c := range []struct {
		ec elliptic.Curve
		dh ecdh.Curve
	}{{elliptic.P256(), ecdh.P256()}, {elliptic.P384(), ecdh.P384()}, {elliptic.P521(), ecdh.P521()}} {
		srv, _ := ecdsa.GenerateKey(c.ec, rand.Reader)
		epk, _ := ecdsa.GenerateKey(c.ec, rand.Reader)
		m, err := newECMR(&srv.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		x, y, err := m.blind(&epk.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		yx, yy := c.ec.ScalarMult(x, y, srv.D.Bytes()) // what tangd answers
		z, err := m.unblind(yx, yy)
		if err != nil {
			t.Fatal(err)
		}
		m.done()
		sk, _ := srv.ECDH()
		pk, _ := epk.PublicKey.ECDH()
		want, err := sk.ECDH(pk)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(z, want) {
			t.Fatalf("%s: Z = %x, want %x", c.ec.Params().Name, z, want)
		}
	}
}

// TestECMRRefusesBadPoints: points off the curve, the point at infinity, a key on
// another curve, and an answer that makes the shared secret the point at infinity
// are refused with ErrBadPoint, never used.
func TestECMRRefusesBadPoints(t *testing.T) {
	srv, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	off := &ecdsa.PublicKey{Curve: elliptic.P521(), X: new(big.Int).Set(srv.X), Y: new(big.Int).Add(srv.Y, big.NewInt(1))}
	inf := &ecdsa.PublicKey{Curve: elliptic.P521(), X: new(big.Int), Y: new(big.Int)}
	big := &ecdsa.PublicKey{Curve: elliptic.P521(), X: new(big.Int).Add(srv.X, elliptic.P521().Params().P), Y: srv.Y}
	for name, k := range map[string]*ecdsa.PublicKey{"off the curve": off, "infinity": inf, "coordinate >= p": big, "nil": nil} {
		if _, err := newECMR(k); !errors.Is(err, ErrBadPoint) {
			t.Errorf("server key %s: %v, want ErrBadPoint", name, err)
		}
	}
	m, err := newECMR(&srv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]*ecdsa.PublicKey{"off the curve": off, "infinity": inf, "another curve": &other.PublicKey, "coordinate >= p": big} {
		if _, _, err := m.blind(k); !errors.Is(err, ErrBadPoint) {
			t.Errorf("epk %s: %v, want ErrBadPoint", name, err)
		}
	}
	if _, err := m.unblind(off.X, off.Y); !errors.Is(err, ErrBadPoint) {
		t.Errorf("answer off the curve: %v, want ErrBadPoint", err)
	}
	// An answer of e·S: Z = Y - e·S is the point at infinity.
	ex, ey := elliptic.P521().ScalarMult(srv.X, srv.Y, m.e)
	if _, err := m.unblind(ex, ey); !errors.Is(err, ErrBadPoint) {
		t.Errorf("answer giving Z at infinity: %v, want ErrBadPoint", err)
	}
}
