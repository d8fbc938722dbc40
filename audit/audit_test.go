package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/hashicorp/go-hclog"
)

// TestRecordCarriesNoBytes checks the contract that a Record has no field that could
// carry key material: no []byte, no array, no interface, no pointer to one, nested or not.
func TestRecordCarriesNoBytes(t *testing.T) {
	var check func(path string, ty reflect.Type)
	check = func(path string, ty reflect.Type) {
		switch ty.Kind() {
		case reflect.Interface, reflect.Array, reflect.Func, reflect.Chan, reflect.UnsafePointer:
			t.Errorf("%s is a %s: a Record must hold only names and public values", path, ty.Kind())
		case reflect.Slice:
			if ty.Elem().Kind() == reflect.Uint8 {
				t.Errorf("%s is []byte: a Record must never carry bytes", path)
			}
			check(path+"[]", ty.Elem())
		case reflect.Pointer:
			check(path+"*", ty.Elem())
		case reflect.Map:
			check(path+"[key]", ty.Key())
			check(path+"[]", ty.Elem())
		case reflect.Struct:
			if ty == reflect.TypeOf(time.Time{}) {
				return
			}
			for i := 0; i < ty.NumField(); i++ {
				f := ty.Field(i)
				check(path+"."+f.Name, f.Type)
			}
		}
	}
	check("Record", reflect.TypeOf(Record{}))
}

func TestMessageIDsStableAndDistinct(t *testing.T) {
	seen := map[string]Kind{}
	for _, k := range Kinds() {
		id := MessageID(k)
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Errorf("%s: MESSAGE_ID %q is not 128 bits of lower-case hex", k, id)
		}
		if o, dup := seen[id]; dup {
			t.Errorf("%s and %s share MESSAGE_ID %s", k, o, id)
		}
		seen[id] = k
	}
	// The IDs are a published interface: pin a few.
	for k, want := range map[Kind]string{
		KindKeyRelease: "38f1552ca13d44eab4dd50e18f554c8d",
		KindReseal:     "eb0917af7da645c0b0b5e687dedc35c3",
		KindErase:      "40203cc0be9943d28cfe28321ca413fa",
	} {
		if got := MessageID(k); got != want {
			t.Errorf("MessageID(%s) = %s, want %s (never change a published MESSAGE_ID)", k, got, want)
		}
	}
	if MessageID("bogus") == MessageID(KindKeyRelease) {
		t.Error("unknown kind shares a MESSAGE_ID")
	}
}

type sent struct {
	msg  string
	prio journal.Priority
	vars map[string]string
}

type fakeJournal struct {
	mu      sync.Mutex
	entries []sent
	err     error
}

func (j *fakeJournal) send(msg string, prio journal.Priority, vars map[string]string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, sent{msg, prio, vars})
	return j.err
}

func TestEmitFileAndJournal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "audit.jsonl")
	j := &fakeJournal{}
	clock := time.Date(2026, 11, 23, 6, 0, 0, 0, time.UTC)
	l := New(Options{Path: path, Actor: "cli", Journal: j.send, Now: func() time.Time { clock = clock.Add(time.Minute); return clock }})
	ctx := context.Background()
	recs := []Record{
		{Kind: KindKeyRelease, Volume: "data0", VolumeUUID: "u-1", Token: TokenID(0), TokenType: "systemd-tpm2", Protector: "tpm2",
			Keyslots: []int{1}, PCRBank: "sha256", PCRs: map[string]string{"16": "00ff", "7": "ab"}},
		{Kind: KindKeyRelease, Result: Failure, Volume: "data0", Token: TokenID(1), Protector: "kmip", KMSServer: "kms1:5696", KEKUID: "kek-9", Error: "refused"},
		{Kind: KindEnroll, Device: "/dev/vdb", Keyslots: []int{2}, Token: TokenID(3), Protector: "recovery", Actor: "daemon"},
	}
	for _, r := range recs {
		if err := l.Emit(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %o, want 600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("audit folder mode %o, want 700", di.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if n := strings.Count(string(raw), "\n"); n != 3 {
		t.Fatalf("%d lines, want 3:\n%s", n, raw)
	}
	got, err := Read(bytes.NewReader(raw), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("read %d records", len(got))
	}
	if g := got[0]; g.Kind != KindKeyRelease || g.Result != Success || g.Actor != "cli" || *g.Token != 0 || g.PCRs["16"] != "00ff" ||
		g.UID != os.Getuid() || g.PID != os.Getpid() || !g.Time.Equal(time.Date(2026, 11, 23, 6, 1, 0, 0, time.UTC)) {
		t.Errorf("record 0 = %+v", g)
	}
	if g := got[1]; g.Result != Failure || g.KEKUID != "kek-9" || g.Error != "refused" {
		t.Errorf("record 1 = %+v", g)
	}
	if got[2].Actor != "daemon" {
		t.Errorf("explicit actor replaced: %+v", got[2])
	}
	since, err := Read(bytes.NewReader(raw), time.Date(2026, 11, 23, 6, 2, 0, 0, time.UTC))
	if err != nil || len(since) != 2 || since[0].Result != Failure {
		t.Errorf("since: %d records, %v", len(since), err)
	}

	if len(j.entries) != 3 {
		t.Fatalf("%d journal entries", len(j.entries))
	}
	e := j.entries[0]
	if e.vars["MESSAGE_ID"] != MessageID(KindKeyRelease) || e.vars["DISKCRYPTD_PCRS"] != "7=ab,16=00ff" ||
		e.vars["DISKCRYPTD_TOKEN"] != "0" || e.vars["DISKCRYPTD_VOLUME_UUID"] != "u-1" || e.prio != journal.PriInfo ||
		!strings.Contains(e.msg, "key-release success volume=data0") {
		t.Errorf("journal entry 0: %+v", e)
	}
	if e := j.entries[1]; e.prio != journal.PriWarning || e.vars["DISKCRYPTD_KEK_UID"] != "kek-9" || e.vars["MESSAGE_ID"] != MessageID(KindKeyRelease) {
		t.Errorf("journal entry 1: %+v", e)
	}
	for k := range e.vars {
		if k != "MESSAGE_ID" && k != "SYSLOG_IDENTIFIER" && !strings.HasPrefix(k, "DISKCRYPTD_") {
			t.Errorf("journal field %s", k)
		}
	}
}

// TestRotation: a rotated-away file is left alone, the next record creates a new one;
// a file found with a wide mode is narrowed to 0600 before it is written.
func TestRotationAndMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	l := New(Options{Path: path, NoJournal: true})
	ctx := context.Background()
	if err := l.Emit(ctx, Record{Kind: KindErase, Device: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Emit(ctx, Record{Kind: KindErase, Device: "b"}); err != nil {
		t.Fatal(err)
	}
	for p, dev := range map[string]string{path + ".1": "a", path: "b"} {
		f, _ := os.Open(p)
		recs, err := Read(f, time.Time{})
		f.Close()
		if err != nil || len(recs) != 1 || recs[0].Device != dev {
			t.Errorf("%s: %+v %v", p, recs, err)
		}
	}
	os.Chmod(path, 0o644)
	if err := l.Emit(ctx, Record{Kind: KindErase, Device: "c"}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o after write, want 600", fi.Mode().Perm())
	}
}

func TestConcurrentEmit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l := New(Options{Path: path, NoJournal: true})
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 10; k++ {
				l.Emit(context.Background(), Record{Kind: KindKeyRelease, Token: TokenID(i), Detail: strings.Repeat("x", 300)})
			}
		}()
	}
	wg.Wait()
	f, _ := os.Open(path)
	defer f.Close()
	recs, err := Read(f, time.Time{})
	if err != nil || len(recs) != 160 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
}

func TestEmitErrors(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs})
	// The path's folder is a file: the record cannot be written.
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o600)
	j := &fakeJournal{err: errors.New("journal down")}
	l := New(Options{Path: filepath.Join(dir, "f", "audit.jsonl"), Journal: j.send, Logger: log})
	err := l.Emit(context.Background(), Record{Kind: KindReseal})
	if !errors.Is(err, ErrWrite) || !strings.Contains(err.Error(), "journal down") || !strings.Contains(err.Error(), "audit log folder") {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(logs.String(), "audit record not written") {
		t.Errorf("no log line: %s", logs.String())
	}
	var nilLogger *Logger
	if err := nilLogger.Emit(context.Background(), Record{Kind: KindReseal}); err != nil {
		t.Errorf("nil logger: %v", err)
	}
	if New(Options{Path: "none", NoJournal: true}).Path() != "" {
		t.Error(`"none" still has a path`)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(Options{Path: filepath.Join(dir, "x"), NoJournal: true}).Emit(ctx, Record{Kind: KindReseal}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

func TestPathFrom(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvPath {
				return v
			}
			return ""
		}
	}
	tests := []struct {
		env, configured, want string
	}{
		{"", "", DefaultPath},
		{"", "/c", "/c"},
		{"/e", "/c", "/e"},
		{"none", "/c", "none"},
	}
	for _, tc := range tests {
		if got := PathFrom(env(tc.env), tc.configured); got != tc.want {
			t.Errorf("PathFrom(env=%q, conf=%q) = %q, want %q", tc.env, tc.configured, got, tc.want)
		}
	}
}

func TestReadMalformed(t *testing.T) {
	for _, in := range []string{
		"{\"time\":\"2026-01-01T00:00:00Z\",\"kind\":\"erase\"}\nnot json\n",
		"{\"kind\":\"erase\"}\n",
		"{\"time\":\"2026-01-01T00:00:00Z\"}\n",
	} {
		_, err := Read(strings.NewReader(in), time.Time{})
		if !errors.Is(err, ErrFormat) {
			t.Errorf("Read(%q) err = %v, want ErrFormat", in, err)
		}
	}
	recs, err := Read(strings.NewReader("\n{\"time\":\"2026-01-01T00:00:00Z\",\"kind\":\"erase\",\"future\":1}\n\n"), time.Time{})
	if err != nil || len(recs) != 1 {
		t.Errorf("blank lines and unknown fields: %v %v", recs, err)
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte("{\"time\":\"2026-01-01T00:00:00Z\",\"kind\":\"erase\",\"result\":\"success\",\"pcrs\":{\"7\":\"ab\"}}\n"))
	f.Add([]byte("\n\n{}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := Read(bytes.NewReader(b), time.Time{})
		if err != nil && !errors.Is(err, ErrFormat) {
			t.Fatalf("error %v does not wrap ErrFormat", err)
		}
		for _, r := range recs {
			_ = r.Message()
			_ = r.Fields()
		}
	})
}

// TestMessageIDsDocumented: every kind's MESSAGE_ID is in the operations guide's
// table, so operators can filter the journal by it.
func TestMessageIDsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Kinds() {
		if !strings.Contains(string(doc), "| "+MessageID(k)+" |") {
			t.Errorf("docs/operations.md lacks the MESSAGE_ID of %s (%s)", k, MessageID(k))
		}
	}
}
