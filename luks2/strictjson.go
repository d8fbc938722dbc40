package luks2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode"
)

// cryptsetup reads the JSON metadata with json-c, which matches member names exactly.
// encoding/json matches them case-insensitively (with Unicode folding: "ſalt" matches
// "salt") and lets the last duplicate win. Were both accepted, a header carrying
// `"key_size":64,"KEY_SIZE":32` would describe one volume to cryptsetup and another
// to us. We therefore refuse, before anything is decoded:
//
//   - an object that names the same member twice, or two members whose names differ
//     only by case (anywhere in the metadata, tokens included: checkNoDuplicateKeys).
//     json-c sees two members where a Go decoder of that token would merge them, the
//     last one winning;
//   - a member whose name is not exactly one of the fields we decode it into but
//     would be matched to one case-insensitively (decodeStrict, via the json tags).
//
// Members we do not know are still accepted and kept (cryptsetup ignores them too).

// maxJSONDepth bounds the nesting checkNoDuplicateKeys walks.
const maxJSONDepth = 64

// checkNoDuplicateKeys walks js token by token and fails when any object repeats a
// member name, compared after unescaping and case folding as encoding/json folds
// (foldName): exact duplicates and case variants alike.
func checkNoDuplicateKeys(js []byte) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	type frame struct {
		object    bool
		expectKey bool
		keys      map[string]struct{}
	}
	var stack []*frame
	// afterValue marks that a complete value was read inside the top frame.
	afterValue := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].expectKey = true
		}
	}
	for {
		t, err := dec.Token()
		if err == io.EOF {
			if len(stack) != 0 {
				return errors.New("unterminated JSON")
			}
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if top != nil && top.object && top.expectKey {
			if d, ok := t.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				afterValue()
				continue
			}
			k, ok := t.(string)
			if !ok {
				return errors.New("object member name is not a string")
			}
			f := foldName(k)
			if _, dup := top.keys[f]; dup {
				return fmt.Errorf("duplicate member %q (names are compared ignoring case)", k)
			}
			top.keys[f] = struct{}{}
			top.expectKey = false
			continue
		}
		switch d := t.(type) {
		case json.Delim:
			switch d {
			case '{', '[':
				if len(stack) >= maxJSONDepth {
					return errors.New("JSON nested too deeply")
				}
				stack = append(stack, &frame{object: d == '{', expectKey: d == '{', keys: map[string]struct{}{}})
			case '}', ']':
				if len(stack) == 0 {
					return errors.New("unbalanced JSON")
				}
				stack = stack[:len(stack)-1]
				afterValue()
			}
		default:
			afterValue()
		}
	}
}

// foldName maps a member name to the form under which encoding/json considers two
// names equal: every rune to upper(lower(r)), which also folds "ſ" to "S" and the
// Kelvin sign to "K".
func foldName(k string) string {
	return strings.Map(func(r rune) rune { return unicode.ToUpper(unicode.ToLower(r)) }, k)
}

// DecodeStrict unmarshals the JSON object raw into v (a pointer to a struct with
// json tags) the way the luks2 metadata parser does: it fails when an object repeats
// a member (ignoring case) or when a member differs from one of v's json names only
// by case. Packages that parse token JSON (systemd-tpm2, clevis, KMS tokens) should
// use it, so that they read the token as systemd and cryptsetup (json-c, exact names)
// read it.
func DecodeStrict(raw []byte, v any) error {
	if err := checkNoDuplicateKeys(raw); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if err := decodeStrict(raw, v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	return nil
}

// decodeStrict unmarshals the JSON object raw into v (a pointer to one of our json
// structs) after checking, recursively through nested structs, pointers and slices,
// that no member name differs from a field's json name only by case.
func decodeStrict(raw []byte, v any) error {
	if err := checkFieldCase(raw, reflect.TypeOf(v)); err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

// jsonFieldNames returns the json member names of struct type t.
func jsonFieldNames(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func checkFieldCase(raw []byte, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil
	}
	switch t.Kind() {
	case reflect.Slice:
		if raw[0] != '[' || t.Elem() == reflect.TypeOf(byte(0)) {
			return nil
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return nil // json.Unmarshal reports it
		}
		for _, e := range elems {
			if err := checkFieldCase(e, t.Elem()); err != nil {
				return err
			}
		}
	case reflect.Struct:
		if raw[0] != '{' {
			return nil
		}
		if reflect.PointerTo(t).Implements(reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()) {
			return nil
		}
		fields := jsonFieldNames(t)
		var members map[string]json.RawMessage
		if err := json.Unmarshal(raw, &members); err != nil {
			return nil
		}
		for k, val := range members {
			if ft, ok := fields[k]; ok {
				if err := checkFieldCase(val, ft); err != nil {
					return err
				}
				continue
			}
			for name := range fields {
				if strings.EqualFold(k, name) {
					return fmt.Errorf("member %q is not %q: names are case-sensitive", k, name)
				}
			}
		}
	}
	return nil
}
