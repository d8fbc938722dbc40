package luks2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
)

// seedHeaders returns real header images: one cryptsetup 2.6 wrote (testdata) and
// one we write.
func seedHeaders(f *testing.F) [][]byte {
	var out [][]byte
	if b, err := os.ReadFile("testdata/cryptsetup-2.6-header.bin"); err == nil {
		out = append(out, b)
	} else {
		f.Fatal(err)
	}
	img := memFormat(f, crashSize, "seed", crashFormatOpts())
	d := newMemDev(img, -1)
	v, err := OpenDevice(d, crashSize, ReadWrite)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := v.AddToken([]byte(`{"type":"x","keyslots":["0"],"u":{"k":[1,"2"]}}`), 5); err != nil {
		f.Fatal(err)
	}
	out = append(out, d.cur[:2*DefaultHeaderSize])
	return out
}

// FuzzReadHeader feeds the header reader device images built from a fuzzed binary
// header (its first 512 bytes) and a fuzzed JSON area, as a primary copy and, per
// mode bit 0, also as a secondary copy; mode bit 1 recomputes the checksums so that
// the JSON parser is reached. Keeping the inputs small keeps the fuzzer fast.
func FuzzReadHeader(f *testing.F) {
	for _, s := range seedHeaders(f) {
		js := s[binHeaderSize:DefaultHeaderSize]
		if i := bytes.IndexByte(js, 0); i >= 0 {
			js = js[:i]
		}
		for mode := uint8(0); mode < 4; mode++ {
			f.Add(bytes.Clone(s[:512]), bytes.Clone(js), mode)
		}
	}
	f.Add([]byte("LUKS\xba\xbe\x00\x01"), []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, bin, js []byte, mode uint8) {
		if len(bin) > 512 || len(js) > DefaultHeaderSize {
			return
		}
		img := make([]byte, 2*DefaultHeaderSize+4096)
		copy(img, bin)
		copy(img[binHeaderSize:DefaultHeaderSize], js)
		if mode&1 != 0 {
			s := img[DefaultHeaderSize : 2*DefaultHeaderSize]
			copy(s, img[:DefaultHeaderSize])
			copy(s, magicSecondary)
			binary.BigEndian.PutUint64(s[offHdrOffset:], DefaultHeaderSize)
		}
		if mode&2 != 0 {
			for _, off := range []int{0, DefaultHeaderSize} {
				h := img[off : off+DefaultHeaderSize]
				copy(h[offCsum:offCsum+lenCsum], make([]byte, lenCsum))
				copy(h[offCsum:], checksum("sha256", h))
			}
		}
		tryRead(t, img)
	})
}

func tryRead(t *testing.T, data []byte) {
	st, err := readHeaders(bytes.NewReader(data))
	if err != nil {
		if !errorsIsAny(err, ErrNotLUKS, ErrLUKS1, ErrNoValidHeader, ErrInvalidMetadata) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		return
	}
	v := &Volume{dev: readOnlyAt{bytes.NewReader(data)}, size: int64(len(data))}
	if err := v.load(); err != nil {
		t.Fatalf("load after successful read: %v", err)
	}
	_ = v.Metadata()
	// What we accept we must be able to write back and read again unchanged.
	js := st.best.meta.encode()
	m2, err := parseMetadata(js, st.best.bin.hdrSize)
	if err != nil {
		t.Fatalf("re-parse of our own encoding failed: %v\n%s", err, js)
	}
	if !bytes.Equal(m2.encode(), js) {
		t.Fatalf("encoding not stable")
	}
}

// FuzzParseMetadata feeds arbitrary JSON to the metadata parser; accepted metadata
// must re-encode to text that parses to the same encoding.
func FuzzParseMetadata(f *testing.F) {
	for _, s := range seedHeaders(f) {
		js := s[binHeaderSize:DefaultHeaderSize]
		if i := bytes.IndexByte(js, 0); i >= 0 {
			js = js[:i]
		}
		f.Add(js)
	}
	f.Add([]byte(`{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{}}`))
	// Metadata that json-c and encoding/json would read differently (duplicate and
	// case-variant members), which the parser must refuse.
	orig := cryptsetupJSON(f)
	for _, e := range ambiguousJSONEdits {
		f.Add([]byte(strings.Replace(orig, e.old, e.new, 1)))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		m, err := parseMetadata(js, DefaultHeaderSize)
		if err != nil {
			if !errors.Is(err, ErrInvalidMetadata) && !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		enc := m.encode()
		m2, err := parseMetadata(enc, DefaultHeaderSize)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, enc)
		}
		if !bytes.Equal(m2.encode(), enc) {
			t.Fatalf("encoding not stable")
		}
	})
}

// errorsIsAny reports whether err matches one of targets.
func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
