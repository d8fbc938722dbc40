package luks2

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
)

// AnyToken asks AddToken and AddKeyslotWithToken for the lowest free token id.
const AnyToken = -1

// maxTokenJSON bounds one token's JSON text.
const maxTokenJSON = 1 << 20

func (m *metadata) freeToken(id int) (int, error) {
	if id == AnyToken {
		for i := 0; i < maxObjects; i++ {
			if m.tokens[i] == nil {
				return i, nil
			}
		}
		return 0, ErrNoFreeToken
	}
	if id < 0 || id >= maxObjects {
		return 0, fmt.Errorf("%w: token id %d out of range 0-%d", ErrInvalidToken, id, maxObjects-1)
	}
	if m.tokens[id] != nil {
		return 0, fmt.Errorf("%w: %d", ErrTokenInUse, id)
	}
	return id, nil
}

// parseTokenLoose checks a token that will get its "keyslots" member set by us.
func parseTokenLoose(raw []byte) (*tokenEntry, error) {
	b, err := setMember(raw, "keyslots", []byte("[]"))
	if err != nil {
		return nil, err
	}
	return parseToken(b)
}

// AddToken stores a token (§3.7): a JSON object with a string "type" and a
// "keyslots" array naming existing keyslots; every other member is kept as written.
// id may be AnyToken. It returns the token id.
func (v *Volume) AddToken(token json.RawMessage, id int) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	release, err := v.beginWrite(context.Background())
	if err != nil {
		return 0, err
	}
	defer release()
	if len(token) > maxTokenJSON {
		return 0, fmt.Errorf("%w: larger than %d bytes", ErrInvalidToken, maxTokenJSON)
	}
	te, err := parseToken(token)
	if err != nil {
		return 0, err
	}
	for _, k := range te.keyslots {
		if v.meta.keyslots[k] == nil {
			return 0, fmt.Errorf("%w: references missing keyslot %d", ErrInvalidToken, k)
		}
	}
	tid, err := v.meta.freeToken(id)
	if err != nil {
		return 0, err
	}
	n := v.meta.clone()
	n.tokens[tid] = te
	if err := v.commit(n, v.bin.label, v.bin.subsystem); err != nil {
		return 0, err
	}
	return tid, nil
}

// ImportToken reads one token's JSON from r (like `cryptsetup token import`) and
// stores it with AddToken.
func (v *Volume) ImportToken(r io.Reader, id int) (int, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxTokenJSON+1))
	if err != nil {
		return 0, fmt.Errorf("luks2: reading token: %w", err)
	}
	if len(b) > maxTokenJSON {
		return 0, fmt.Errorf("%w: larger than %d bytes", ErrInvalidToken, maxTokenJSON)
	}
	return v.AddToken(b, id)
}

// ExportToken returns token id's JSON object as stored (compact), like `cryptsetup
// token export`.
func (v *Volume) ExportToken(id int) (json.RawMessage, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.meta.tokens[id]
	if t == nil {
		return nil, fmt.Errorf("%w: %d", ErrTokenNotFound, id)
	}
	return append(json.RawMessage(nil), t.raw...), nil
}

// RemoveToken deletes token id.
func (v *Volume) RemoveToken(id int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	release, err := v.beginWrite(context.Background())
	if err != nil {
		return err
	}
	defer release()
	if v.meta.tokens[id] == nil {
		return fmt.Errorf("%w: %d", ErrTokenNotFound, id)
	}
	n := v.meta.clone()
	delete(n.tokens, id)
	return v.commit(n, v.bin.label, v.bin.subsystem)
}

// ReplaceToken replaces token id's JSON object with token in one metadata commit (a
// KMS token rewrapped under a new KEK): there is never a moment with neither the old
// nor the new token on disk. token must name existing keyslots.
func (v *Volume) ReplaceToken(id int, token json.RawMessage) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.writable(); err != nil {
		return err
	}
	if len(token) > maxTokenJSON {
		return fmt.Errorf("%w: larger than %d bytes", ErrInvalidToken, maxTokenJSON)
	}
	if v.meta.tokens[id] == nil {
		return fmt.Errorf("%w: %d", ErrTokenNotFound, id)
	}
	te, err := parseToken(token)
	if err != nil {
		return err
	}
	for _, k := range te.keyslots {
		if v.meta.keyslots[k] == nil {
			return fmt.Errorf("%w: references missing keyslot %d", ErrInvalidToken, k)
		}
	}
	n := v.meta.clone()
	n.tokens[id] = te
	return v.commit(n, v.bin.label, v.bin.subsystem)
}
