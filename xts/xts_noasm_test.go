//go:build !amd64 || purego

package xts

import "testing"

func TestFastPathChosen(t *testing.T) {
	c, err := New(make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	if c.impl != generic {
		t.Fatalf("New chose %s in a build without assembly", c.impl.name)
	}
}
