package luks2

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Limits of the JSON metadata (§3.3). Ids of keyslots and tokens are 0–31 as in
// cryptsetup; we apply the same bound to segments and digests.
const (
	maxObjects    = 32
	maxStripes    = 4000
	maxSaltLen    = 256
	minDigestLen  = 20
	maxArgonMem   = 4 << 20 // KiB, cryptsetup's limit (4 GiB)
	maxArgonTime  = 1 << 24
	maxArgonLanes = 16
	maxIterations = 1<<32 - 1
	minSectorSize = 512
	maxSectorSize = 4096
)

// u64 is a uint64 written as a JSON string of decimal digits (§3.3).
type u64 uint64

func (u u64) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatUint(uint64(u), 10) + `"`), nil
}

func (u *u64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("expected a decimal string: %w", err)
	}
	v, err := parseDecimal(s)
	if err != nil {
		return err
	}
	*u = u64(v)
	return nil
}

// parseDecimal accepts "0" or digits without a leading zero, up to 2^63-1.
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("bad decimal string %q", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad decimal string %q", s)
		}
	}
	v, err := strconv.ParseUint(s, 10, 63)
	if err != nil {
		return 0, fmt.Errorf("bad decimal string %q", s)
	}
	return v, nil
}

// jsonKeyslot is a keyslot object (§3.5).
type jsonKeyslot struct {
	Type     string    `json:"type"`
	KeySize  int       `json:"key_size"`
	AF       *jsonAF   `json:"af,omitempty"`
	Area     *jsonArea `json:"area"`
	KDF      *jsonKDF  `json:"kdf,omitempty"`
	Priority *int      `json:"priority,omitempty"`
}

// jsonArea is a keyslot area object (§3.5.1, type raw).
type jsonArea struct {
	Type       string `json:"type"`
	Offset     u64    `json:"offset"`
	Size       u64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

// jsonAF is an anti-forensic splitter object (§3.5.3, type luks1).
type jsonAF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

// jsonKDF is a KDF object (§3.5.2): pbkdf2 uses hash and iterations, argon2i and
// argon2id use time, memory (KiB) and cpus.
type jsonKDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	Iterations int    `json:"iterations,omitempty"`
	Time       int    `json:"time,omitempty"`
	Memory     int    `json:"memory,omitempty"`
	CPUs       int    `json:"cpus,omitempty"`
	Salt       string `json:"salt"`
}

// jsonSegment is a segment object (§3.4).
type jsonSegment struct {
	Type       string   `json:"type"`
	Offset     u64      `json:"offset"`
	Size       string   `json:"size"`
	IVTweak    *u64     `json:"iv_tweak,omitempty"`
	Encryption string   `json:"encryption,omitempty"`
	SectorSize int      `json:"sector_size,omitempty"`
	Flags      []string `json:"flags,omitempty"`
	// Integrity is present on authenticated-encryption volumes (§3.4), which this
	// package can read but not activate.
	Integrity json.RawMessage `json:"integrity,omitempty"`
}

// jsonDigest is a digest object (§3.8, type pbkdf2).
type jsonDigest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       string   `json:"salt"`
	Digest     string   `json:"digest"`
}

// jsonConfig is the config object (§3.9, §3.10).
type jsonConfig struct {
	JSONSize     u64               `json:"json_size"`
	KeyslotsSize u64               `json:"keyslots_size"`
	Flags        []string          `json:"flags,omitempty"`
	Requirements *jsonRequirements `json:"requirements,omitempty"`
}

type jsonRequirements struct {
	Mandatory []string `json:"mandatory,omitempty"`
}

// jsonToken is what we need of a token object (§3.7); the rest stays in raw.
type jsonToken struct {
	Type     *string   `json:"type"`
	Keyslots *[]string `json:"keyslots"`
}

// entry is one object of a section with its raw JSON, kept as written.
type keyslotEntry struct {
	raw json.RawMessage
	ks  jsonKeyslot
}

type tokenEntry struct {
	raw      json.RawMessage
	typ      string
	keyslots []int
}

type segmentEntry struct {
	raw json.RawMessage
	sg  jsonSegment
	// parsed
	size    uint64 // 0 when dynamic
	dynamic bool
}

type digestEntry struct {
	raw json.RawMessage
	dg  jsonDigest
	// parsed
	keyslots, segments []int
	salt, digest       []byte
}

// metadata is the parsed, validated JSON metadata. The raw JSON of each object is
// kept so that what we do not change is written back as it was.
type metadata struct {
	keyslots map[int]*keyslotEntry
	tokens   map[int]*tokenEntry
	segments map[int]*segmentEntry
	digests  map[int]*digestEntry
	config   jsonConfig
	rawCfg   json.RawMessage
	// extra holds unknown top-level members, written back after config.
	extra     map[string]json.RawMessage
	extraKeys []string
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidMetadata}, a...)...)
}

// parseID parses an object id: a decimal string below maxObjects.
func parseID(s string) (int, error) {
	v, err := parseDecimal(s)
	if err != nil || v >= maxObjects {
		return 0, invalid("object id %q", s)
	}
	return int(v), nil
}

func parseIDList(l []string, what string) ([]int, error) {
	if len(l) > maxObjects {
		return nil, invalid("too many %s references", what)
	}
	out := make([]int, 0, len(l))
	seen := map[int]bool{}
	for _, s := range l {
		id, err := parseID(s)
		if err != nil {
			return nil, err
		}
		if seen[id] {
			return nil, invalid("duplicate %s reference %d", what, id)
		}
		seen[id] = true
		out = append(out, id)
	}
	return out, nil
}

// parseSection decodes {"id": {...}, ...} into raw objects keyed by id.
func parseSection(raw json.RawMessage, name string) (map[int]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, invalid("%s is not an object", name)
	}
	if len(m) > maxObjects {
		return nil, invalid("too many %s", name)
	}
	out := make(map[int]json.RawMessage, len(m))
	for k, v := range m {
		id, err := parseID(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if _, dup := out[id]; dup {
			return nil, invalid("%s: duplicate id %d", name, id)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil || len(v) == 0 || v[0] != '{' {
			return nil, invalid("%s %d is not an object", name, id)
		}
		out[id] = c.Bytes()
	}
	return out, nil
}

func decodeB64(s string, max int, what string) ([]byte, error) {
	if len(s) > base64.StdEncoding.EncodedLen(max) {
		return nil, invalid("%s too long", what)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, invalid("%s is not base64", what)
	}
	return b, nil
}

func knownHash(h string) bool {
	switch h {
	case "sha1", "sha256", "sha512":
		return true
	}
	return false
}

// parseMetadata parses and validates the JSON metadata of a header of hdrSize bytes.
func parseMetadata(js []byte, hdrSize int64) (*metadata, error) {
	if len(js) == 0 || int64(len(js)) > hdrSize-binHeaderSize {
		return nil, invalid("JSON area size")
	}
	if err := checkNoDuplicateKeys(js); err != nil {
		return nil, invalid("JSON metadata: %v", err)
	}
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(&top); err != nil || top == nil {
		return nil, invalid("JSON metadata is not an object")
	}
	if len(bytes.TrimSpace(js[dec.InputOffset():])) != 0 {
		return nil, invalid("trailing data after JSON metadata")
	}
	m := &metadata{
		keyslots: map[int]*keyslotEntry{},
		tokens:   map[int]*tokenEntry{},
		segments: map[int]*segmentEntry{},
		digests:  map[int]*digestEntry{},
		extra:    map[string]json.RawMessage{},
	}
	for _, sec := range []string{"keyslots", "tokens", "segments", "digests", "config"} {
		if _, ok := top[sec]; !ok {
			return nil, invalid("missing %q", sec)
		}
	}
	for k, v := range top {
		switch k {
		case "keyslots", "tokens", "segments", "digests", "config":
		default:
			for _, sec := range []string{"keyslots", "tokens", "segments", "digests", "config"} {
				if strings.EqualFold(k, sec) {
					return nil, invalid("member %q is not %q: names are case-sensitive", k, sec)
				}
			}
			var c bytes.Buffer
			if err := json.Compact(&c, v); err != nil {
				return nil, invalid("member %q", k)
			}
			m.extra[k] = c.Bytes()
			m.extraKeys = append(m.extraKeys, k)
		}
	}
	sort.Strings(m.extraKeys)

	// config (§3.9)
	var cfg bytes.Buffer
	if err := json.Compact(&cfg, top["config"]); err != nil {
		return nil, invalid("config")
	}
	m.rawCfg = cfg.Bytes()
	if err := decodeStrict(m.rawCfg, &m.config); err != nil {
		return nil, invalid("config: %v", err)
	}
	if int64(m.config.JSONSize) != hdrSize-binHeaderSize {
		return nil, invalid("config.json_size %d does not match header size %d", m.config.JSONSize, hdrSize)
	}
	if m.config.KeyslotsSize%4096 != 0 || m.config.KeyslotsSize > 1<<40 {
		return nil, invalid("config.keyslots_size %d", m.config.KeyslotsSize)
	}
	if len(m.config.Flags) > 64 {
		return nil, invalid("too many config flags")
	}
	if r := m.config.Requirements; r != nil && len(r.Mandatory) > 64 {
		return nil, invalid("too many requirements")
	}
	ksAreaStart := uint64(2 * hdrSize)
	ksAreaEnd := ksAreaStart + uint64(m.config.KeyslotsSize)

	// segments (§3.4)
	segs, err := parseSection(top["segments"], "segments")
	if err != nil {
		return nil, err
	}
	for id, raw := range segs {
		e := &segmentEntry{raw: raw}
		if err := decodeStrict(raw, &e.sg); err != nil {
			return nil, invalid("segment %d: %v", id, err)
		}
		sg := &e.sg
		switch sg.Type {
		case "crypt":
			if sg.Encryption == "" || len(sg.Encryption) > 64 || sg.IVTweak == nil {
				return nil, invalid("segment %d: missing encryption or iv_tweak", id)
			}
			switch sg.SectorSize {
			case 512, 1024, 2048, 4096:
			default:
				return nil, invalid("segment %d: sector_size %d", id, sg.SectorSize)
			}
		case "linear":
			sg.SectorSize = 512
		default:
			return nil, invalid("segment %d: unknown type %q", id, sg.Type)
		}
		if uint64(sg.Offset)%uint64(sg.SectorSize) != 0 {
			return nil, invalid("segment %d: offset %d not aligned to sector size", id, sg.Offset)
		}
		// A backup-previous segment of in-place encryption describes the device as
		// it was before the header existed (cryptsetup: linear at offset 0).
		if uint64(sg.Offset) < ksAreaEnd && !(sg.Type == "linear" && hasFlag(sg.Flags, "backup-previous")) {
			return nil, invalid("segment %d: offset %d overlaps the metadata and keyslots area ending at %d", id, sg.Offset, ksAreaEnd)
		}
		if sg.Size == "dynamic" {
			e.dynamic = true
		} else {
			v, err := parseDecimal(sg.Size)
			if err != nil || v == 0 || v%uint64(sg.SectorSize) != 0 {
				return nil, invalid("segment %d: size %q", id, sg.Size)
			}
			// Offsets and sizes become int64 (device sizes, dm tables): their sum
			// must not wrap.
			if v > math.MaxInt64-uint64(sg.Offset) {
				return nil, invalid("segment %d: offset %d + size %d overflows", id, sg.Offset, v)
			}
			e.size = v
		}
		if len(sg.Flags) > 16 {
			return nil, invalid("segment %d: too many flags", id)
		}
		m.segments[id] = e
	}
	if len(m.segments) == 0 {
		return nil, invalid("no segments")
	}

	// keyslots (§3.5)
	kss, err := parseSection(top["keyslots"], "keyslots")
	if err != nil {
		return nil, err
	}
	type span struct {
		id         int
		start, end uint64
	}
	var spans []span
	for id, raw := range kss {
		e := &keyslotEntry{raw: raw}
		if err := decodeStrict(raw, &e.ks); err != nil {
			return nil, invalid("keyslot %d: %v", id, err)
		}
		ks := &e.ks
		if ks.Type == "" {
			return nil, invalid("keyslot %d: missing type", id)
		}
		if ks.KeySize < 1 || ks.KeySize > 512 {
			return nil, invalid("keyslot %d: key_size %d", id, ks.KeySize)
		}
		if ks.Priority != nil && (*ks.Priority < 0 || *ks.Priority > 2) {
			return nil, invalid("keyslot %d: priority %d", id, *ks.Priority)
		}
		a := ks.Area
		if a == nil {
			return nil, invalid("keyslot %d: missing area", id)
		}
		if a.Type != "raw" {
			if ks.Type == "luks2" {
				return nil, invalid("keyslot %d: area type %q", id, a.Type)
			}
		}
		start, size := uint64(a.Offset), uint64(a.Size)
		if size == 0 || start < ksAreaStart || start > ksAreaEnd || size > ksAreaEnd-start {
			return nil, invalid("keyslot %d: area [%d, +%d) outside the keyslots area [%d, %d)", id, start, size, ksAreaStart, ksAreaEnd)
		}
		if start%512 != 0 || size%512 != 0 {
			return nil, invalid("keyslot %d: area not sector aligned", id)
		}
		spans = append(spans, span{id, start, start + size})
		if ks.Type == "luks2" {
			if err := checkLUKS2Keyslot(id, ks); err != nil {
				return nil, err
			}
		}
		m.keyslots[id] = e
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return nil, invalid("keyslot areas %d and %d overlap", spans[i-1].id, spans[i].id)
		}
	}

	// digests (§3.8)
	dgs, err := parseSection(top["digests"], "digests")
	if err != nil {
		return nil, err
	}
	for id, raw := range dgs {
		e := &digestEntry{raw: raw}
		if err := decodeStrict(raw, &e.dg); err != nil {
			return nil, invalid("digest %d: %v", id, err)
		}
		d := &e.dg
		if d.Type != "pbkdf2" {
			return nil, invalid("digest %d: type %q", id, d.Type)
		}
		if !knownHash(d.Hash) || d.Iterations < 1 || d.Iterations > maxIterations {
			return nil, invalid("digest %d: hash %q or iterations %d", id, d.Hash, d.Iterations)
		}
		if e.keyslots, err = parseIDList(d.Keyslots, "keyslot"); err != nil {
			return nil, err
		}
		if e.segments, err = parseIDList(d.Segments, "segment"); err != nil {
			return nil, err
		}
		for _, k := range e.keyslots {
			if m.keyslots[k] == nil {
				return nil, invalid("digest %d references missing keyslot %d", id, k)
			}
		}
		for _, s := range e.segments {
			if m.segments[s] == nil {
				return nil, invalid("digest %d references missing segment %d", id, s)
			}
		}
		if e.salt, err = decodeB64(d.Salt, maxSaltLen, "digest salt"); err != nil {
			return nil, err
		}
		if e.digest, err = decodeB64(d.Digest, 64, "digest"); err != nil {
			return nil, err
		}
		// A digest of a few bytes would let a wrong key pass (one byte: one
		// passphrase in 256). cryptsetup writes the hash size, at least LUKS1's 20.
		if len(e.digest) < minDigestLen {
			return nil, invalid("digest %d: %d bytes, fewer than %d", id, len(e.digest), minDigestLen)
		}
		m.digests[id] = e
	}
	for k := range m.keyslots {
		n := 0
		for _, d := range m.digests {
			for _, x := range d.keyslots {
				if x == k {
					n++
				}
			}
		}
		if n > 1 {
			return nil, invalid("keyslot %d is in %d digests", k, n)
		}
	}

	// tokens (§3.7)
	tks, err := parseSection(top["tokens"], "tokens")
	if err != nil {
		return nil, err
	}
	for id, raw := range tks {
		e, err := parseToken(raw)
		if err != nil {
			return nil, fmt.Errorf("token %d: %w", id, err)
		}
		for _, k := range e.keyslots {
			if m.keyslots[k] == nil {
				return nil, invalid("token %d references missing keyslot %d", id, k)
			}
		}
		m.tokens[id] = e
	}
	return m, nil
}

func checkLUKS2Keyslot(id int, ks *jsonKeyslot) error {
	a := ks.Area
	if a.Encryption == "" || len(a.Encryption) > 64 || a.KeySize < 1 || a.KeySize > 512 {
		return invalid("keyslot %d: area encryption %q key_size %d", id, a.Encryption, a.KeySize)
	}
	af := ks.AF
	if af == nil || af.Type != "luks1" || af.Stripes < 1 || af.Stripes > maxStripes || !knownHash(af.Hash) {
		return invalid("keyslot %d: bad af object", id)
	}
	need := uint64(ks.KeySize) * uint64(af.Stripes)
	if need > uint64(a.Size) {
		return invalid("keyslot %d: area size %d smaller than split key %d", id, a.Size, need)
	}
	k := ks.KDF
	if k == nil {
		return invalid("keyslot %d: missing kdf", id)
	}
	if _, err := decodeB64(k.Salt, maxSaltLen, "kdf salt"); err != nil {
		return fmt.Errorf("keyslot %d: %w", id, err)
	}
	switch k.Type {
	case "pbkdf2":
		if !knownHash(k.Hash) || k.Iterations < 1 || k.Iterations > maxIterations {
			return invalid("keyslot %d: pbkdf2 hash %q iterations %d", id, k.Hash, k.Iterations)
		}
	case "argon2i", "argon2id":
		if k.Time < 1 || k.Time > maxArgonTime || k.Memory < 8 || k.Memory > maxArgonMem || k.CPUs < 1 || k.CPUs > maxArgonLanes {
			return invalid("keyslot %d: argon2 time %d memory %d cpus %d", id, k.Time, k.Memory, k.CPUs)
		}
	default:
		return invalid("keyslot %d: kdf type %q", id, k.Type)
	}
	return nil
}

// parseToken validates a token object: {"type": string, "keyslots": [ids], ...}.
func parseToken(raw []byte) (*tokenEntry, error) {
	var c bytes.Buffer
	if err := json.Compact(&c, raw); err != nil {
		return nil, fmt.Errorf("%w: not JSON", ErrInvalidToken)
	}
	raw = c.Bytes()
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidToken)
	}
	if err := checkNoDuplicateKeys(raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	var t jsonToken
	if err := decodeStrict(raw, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if t.Type == nil || *t.Type == "" || len(*t.Type) > 64 {
		return nil, fmt.Errorf("%w: missing or bad \"type\"", ErrInvalidToken)
	}
	if t.Keyslots == nil {
		return nil, fmt.Errorf("%w: missing \"keyslots\"", ErrInvalidToken)
	}
	ids, err := parseIDList(*t.Keyslots, "keyslot")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return &tokenEntry{raw: raw, typ: *t.Type, keyslots: ids}, nil
}

// setMember returns the JSON object raw with member key set to val, keeping the order
// and bytes of every other member (a new member goes last).
func setMember(raw []byte, key string, val []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("%w: not an object", ErrInvalidToken)
	}
	var out bytes.Buffer
	out.WriteByte('{')
	found := false
	first := true
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
		}
		if !first {
			out.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		out.Write(kb)
		out.WriteByte(':')
		if k == key {
			out.Write(val)
			found = true
		} else {
			out.Write(v)
		}
	}
	if !found {
		if !first {
			out.WriteByte(',')
		}
		kb, _ := json.Marshal(key)
		out.Write(kb)
		out.WriteByte(':')
		out.Write(val)
	}
	out.WriteByte('}')
	var c bytes.Buffer
	if err := json.Compact(&c, out.Bytes()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return c.Bytes(), nil
}

func idStrings(ids []int) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = strconv.Itoa(id)
	}
	return out
}

func writeSection[E any](b *bytes.Buffer, name string, m map[int]E, raw func(E) []byte) {
	b.WriteString(`"` + name + `":{`)
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"` + strconv.Itoa(id) + `":`)
		b.Write(raw(m[id]))
	}
	b.WriteByte('}')
}

// encode serializes the metadata, compact, in the member order cryptsetup uses.
func (m *metadata) encode() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	writeSection(&b, "keyslots", m.keyslots, func(e *keyslotEntry) []byte { return e.raw })
	b.WriteByte(',')
	writeSection(&b, "tokens", m.tokens, func(e *tokenEntry) []byte { return e.raw })
	b.WriteByte(',')
	writeSection(&b, "segments", m.segments, func(e *segmentEntry) []byte { return e.raw })
	b.WriteByte(',')
	writeSection(&b, "digests", m.digests, func(e *digestEntry) []byte { return e.raw })
	b.WriteString(`,"config":`)
	b.Write(m.rawCfg)
	for _, k := range m.extraKeys {
		kb, _ := json.Marshal(k)
		b.WriteByte(',')
		b.Write(kb)
		b.WriteByte(':')
		b.Write(m.extra[k])
	}
	b.WriteByte('}')
	return b.Bytes()
}

// clone returns a deep enough copy for modification: maps are new, entries shared
// (entries are replaced, never mutated).
func (m *metadata) clone() *metadata {
	n := *m
	n.keyslots = make(map[int]*keyslotEntry, len(m.keyslots))
	for k, v := range m.keyslots {
		n.keyslots[k] = v
	}
	n.tokens = make(map[int]*tokenEntry, len(m.tokens))
	for k, v := range m.tokens {
		n.tokens[k] = v
	}
	n.segments = make(map[int]*segmentEntry, len(m.segments))
	for k, v := range m.segments {
		n.segments[k] = v
	}
	n.digests = make(map[int]*digestEntry, len(m.digests))
	for k, v := range m.digests {
		n.digests[k] = v
	}
	return &n
}

// mustRaw marshals one of our own JSON structs; they cannot fail to marshal.
func mustRaw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic("luks2: marshal of internal type failed: " + err.Error())
	}
	return b
}
