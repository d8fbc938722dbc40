// Package audit records every key release and every key-management change of
// diskcryptd as one structured record, so that an operator can prove afterwards who
// released which key, when, through what.
//
// # Where records go
//
// A Logger writes each record twice:
//
//   - to journald, when journald is there, as one entry whose MESSAGE_ID is stable per
//     event kind (see MessageID) and whose fields are DISKCRYPTD_* (see Record.Fields);
//   - appended to a JSON Lines file (DefaultPath, or the configuration's audit-log
//     setting, or $DISKCRYPTD_AUDIT_LOG), one JSON object per line.
//
// The file is opened for every record with O_APPEND|O_CREATE, written in one write(2),
// fsynced and closed, so a record is on disk before Emit returns and log rotation
// (rename, then a new file) needs no signal: the next record creates the new file.
// The file is created 0600 in a 0700 folder, and a file found with a wider mode is
// narrowed to 0600 before it is written.
//
// # No secret, ever
//
// A Record has no field that can carry key material: no []byte, no interface, only
// strings, numbers and times naming things (volume UUID, token number, protector,
// PCR bank and values, KMS server and KEK UID). PCR values are public measurements,
// not secrets. Callers must not put a passphrase in Error: errors from the packages
// below never carry secrets (see the canary tests), and this package's test plants a
// canary through every path it has.
//
// # Reading
//
// Read parses the file back (skipping nothing silently: a malformed line is an error
// naming its number), for "diskcryptd audit".
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/hashicorp/go-hclog"
)

// DefaultPath is where the audit log is appended unless configured otherwise.
const DefaultPath = "/var/log/diskcryptd/audit.jsonl"

// EnvPath is the environment variable that overrides the audit log path, for the
// daemon and the command line alike. The value "none" disables the file.
const EnvPath = "DISKCRYPTD_AUDIT_LOG"

// Kind is the kind of an audited event.
type Kind string

// Event kinds. Each has a stable journald MESSAGE_ID (MessageID).
const (
	// KindKeyRelease: a token was tried to recover a volume key (Result says whether
	// it did).
	KindKeyRelease Kind = "key-release"
	// KindEnroll: a protector (keyslot and token) was added.
	KindEnroll Kind = "enroll"
	// KindKeyslotAdd: a passphrase keyslot was added.
	KindKeyslotAdd Kind = "keyslot-add"
	// KindRemove: a keyslot or a token was removed.
	KindRemove Kind = "remove"
	// KindTokenImport: a token was imported.
	KindTokenImport Kind = "token-import"
	// KindRewrap: a protector secret was rewrapped under another KEK.
	KindRewrap Kind = "rewrap"
	// KindReseal: a TPM2 protector was sealed again to the current PCR values.
	KindReseal Kind = "reseal"
	// KindErase: every keyslot was destroyed (and perhaps the KEK revoked).
	KindErase Kind = "erase"
	// KindHeaderRestore: the LUKS2 header was restored from a backup.
	KindHeaderRestore Kind = "header-restore"
	// KindRecoveryReplace: the recovery key was replaced by a new one.
	KindRecoveryReplace Kind = "recovery-replace"
)

// messageIDs are the journald MESSAGE_IDs, one per kind; they never change (journalctl
// MESSAGE_ID=... finds every such event across versions).
var messageIDs = map[Kind]string{
	KindKeyRelease:      "38f1552ca13d44eab4dd50e18f554c8d",
	KindEnroll:          "8b6617e865e948e49c1b77a08e46a56d",
	KindKeyslotAdd:      "a658a96d7ade4523997b1e26c4cd1383",
	KindRemove:          "66a2dce536c9444da22ca267ddac6408",
	KindTokenImport:     "b5225eb48d9946d6901bd4498c556754",
	KindRewrap:          "5fcfa51af32e4c8ca78a115c5f6052ae",
	KindReseal:          "eb0917af7da645c0b0b5e687dedc35c3",
	KindErase:           "40203cc0be9943d28cfe28321ca413fa",
	KindHeaderRestore:   "59b0624c19da45b486de3a7f8fd5d39f",
	KindRecoveryReplace: "a57956eb989c4b0693ad7c3fe90d6466",
}

// unknownMessageID is the MESSAGE_ID of a kind not listed above.
const unknownMessageID = "7d1c0a3e5f2b4e6a9c8d0b1a2f3e4d5c"

// MessageID returns the journald MESSAGE_ID of kind k.
func MessageID(k Kind) string {
	if id, ok := messageIDs[k]; ok {
		return id
	}
	return unknownMessageID
}

// Kinds returns every known kind, sorted.
func Kinds() []Kind {
	out := make([]Kind, 0, len(messageIDs))
	for k := range messageIDs {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Result is the outcome of an audited event.
type Result string

// Results.
const (
	Success Result = "success"
	Failure Result = "failure"
)

// Record is one audited event. It holds names and public values only: the type has no
// field that could carry a secret (no []byte, no interface).
type Record struct {
	// Time is when the event happened (set by Emit when zero).
	Time time.Time `json:"time"`
	// Kind is what happened.
	Kind Kind `json:"kind"`
	// Result is whether it succeeded.
	Result Result `json:"result"`
	// Actor is who did it: "daemon" or "cli" (set by the Logger when empty).
	Actor string `json:"actor,omitempty"`
	// UID and PID are the process that did it (set by Emit).
	UID int `json:"uid"`
	PID int `json:"pid"`
	// Device is the device or image path.
	Device string `json:"device,omitempty"`
	// Volume is the mapping name the daemon's configuration gives the volume.
	Volume string `json:"volume,omitempty"`
	// VolumeUUID is the LUKS2 UUID.
	VolumeUUID string `json:"volume_uuid,omitempty"`
	// Token is the LUKS2 token number involved (-1 or absent: none).
	Token *int `json:"token,omitempty"`
	// TokenType is the token's type ("systemd-tpm2", "clevis", ...).
	TokenType string `json:"token_type,omitempty"`
	// Keyslots are the keyslots involved.
	Keyslots []int `json:"keyslots,omitempty"`
	// Protector names the protector ("tpm2", "recovery", "kmip", "tang", "key-file").
	Protector string `json:"protector,omitempty"`
	// PCRBank and PCRs are the TPM2 bank and the PCR values (index -> hex digest)
	// the key release was bound to, as read at the time.
	PCRBank string            `json:"pcr_bank,omitempty"`
	PCRs    map[string]string `json:"pcrs,omitempty"`
	// KMSServer and KEKUID name the KMS and the key-encryption key.
	KMSServer string `json:"kms_server,omitempty"`
	KEKUID    string `json:"kek_uid,omitempty"`
	// TangURL names the Tang server.
	TangURL string `json:"tang_url,omitempty"`
	// Detail says more, in words, for a human.
	Detail string `json:"detail,omitempty"`
	// Error is why the event failed (Result Failure).
	Error string `json:"error,omitempty"`
}

// TokenID returns a pointer to id, for Record.Token.
func TokenID(id int) *int { return &id }

// Fields returns the journald fields of r (DISKCRYPTD_*), without MESSAGE and
// MESSAGE_ID.
func (r *Record) Fields() map[string]string {
	f := map[string]string{
		"DISKCRYPTD_KIND":   string(r.Kind),
		"DISKCRYPTD_RESULT": string(r.Result),
	}
	add := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	add("DISKCRYPTD_ACTOR", r.Actor)
	add("DISKCRYPTD_DEVICE", r.Device)
	add("DISKCRYPTD_VOLUME", r.Volume)
	add("DISKCRYPTD_VOLUME_UUID", r.VolumeUUID)
	if r.Token != nil {
		add("DISKCRYPTD_TOKEN", strconv.Itoa(*r.Token))
	}
	add("DISKCRYPTD_TOKEN_TYPE", r.TokenType)
	if len(r.Keyslots) > 0 {
		s := make([]string, len(r.Keyslots))
		for i, k := range r.Keyslots {
			s[i] = strconv.Itoa(k)
		}
		add("DISKCRYPTD_KEYSLOTS", strings.Join(s, ","))
	}
	add("DISKCRYPTD_PROTECTOR", r.Protector)
	add("DISKCRYPTD_PCR_BANK", r.PCRBank)
	if len(r.PCRs) > 0 {
		add("DISKCRYPTD_PCRS", formatPCRs(r.PCRs))
	}
	add("DISKCRYPTD_KMS_SERVER", r.KMSServer)
	add("DISKCRYPTD_KEK_UID", r.KEKUID)
	add("DISKCRYPTD_TANG_URL", r.TangURL)
	add("DISKCRYPTD_DETAIL", r.Detail)
	add("DISKCRYPTD_ERROR", r.Error)
	return f
}

// formatPCRs writes PCR values as "7=ab12..,16=00..", by PCR number.
func formatPCRs(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, ea := strconv.Atoi(keys[i])
		b, eb := strconv.Atoi(keys[j])
		if ea == nil && eb == nil {
			return a < b
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// Message is the one-line human summary of r (journald's MESSAGE, and the text
// output of "diskcryptd audit").
func (r *Record) Message() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Kind, r.Result)
	if r.Volume != "" {
		fmt.Fprintf(&b, " volume=%s", r.Volume)
	}
	if r.Device != "" {
		fmt.Fprintf(&b, " device=%s", r.Device)
	}
	if r.VolumeUUID != "" {
		fmt.Fprintf(&b, " uuid=%s", r.VolumeUUID)
	}
	if r.Token != nil {
		fmt.Fprintf(&b, " token=%d", *r.Token)
	}
	if r.TokenType != "" {
		fmt.Fprintf(&b, " type=%s", r.TokenType)
	}
	if len(r.Keyslots) > 0 {
		fmt.Fprintf(&b, " keyslots=%v", r.Keyslots)
	}
	if r.Protector != "" {
		fmt.Fprintf(&b, " protector=%s", r.Protector)
	}
	if len(r.PCRs) > 0 {
		fmt.Fprintf(&b, " pcrs=%s:%s", r.PCRBank, formatPCRs(r.PCRs))
	} else if r.PCRBank != "" {
		fmt.Fprintf(&b, " bank=%s", r.PCRBank)
	}
	if r.KMSServer != "" {
		fmt.Fprintf(&b, " kms=%s", r.KMSServer)
	}
	if r.KEKUID != "" {
		fmt.Fprintf(&b, " kek=%s", r.KEKUID)
	}
	if r.TangURL != "" {
		fmt.Fprintf(&b, " tang=%s", r.TangURL)
	}
	if r.Detail != "" {
		fmt.Fprintf(&b, ": %s", r.Detail)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, ": error: %s", r.Error)
	}
	return b.String()
}

// JournalFunc sends one journald entry; journal.Send has this signature.
type JournalFunc func(message string, priority journal.Priority, vars map[string]string) error

// Options configure a Logger.
type Options struct {
	// Path is the JSON Lines file; "" means DefaultPath, "none" means no file.
	Path string
	// Actor is set on records that have none ("daemon", "cli").
	Actor string
	// Journal sends to journald. Nil means journal.Send when journald is there
	// (journal.Enabled), else no journal. Tests substitute it.
	Journal JournalFunc
	// NoJournal disables journald even when it is there.
	NoJournal bool
	// Logger receives a line when a record cannot be written; never a secret.
	Logger hclog.Logger
	// Now gives the time of records without one (default time.Now).
	Now func() time.Time
}

// Logger appends audit records. It is safe for concurrent use. A nil *Logger
// discards records, so callers need no checks.
type Logger struct {
	path    string
	actor   string
	journal JournalFunc
	log     hclog.Logger
	now     func() time.Time
	mu      sync.Mutex
}

// New returns a Logger for opts.
func New(opts Options) *Logger {
	l := &Logger{path: opts.Path, actor: opts.Actor, journal: opts.Journal, log: opts.Logger, now: opts.Now}
	if l.path == "" {
		l.path = DefaultPath
	}
	if l.path == "none" {
		l.path = ""
	}
	if l.journal == nil && !opts.NoJournal && journal.Enabled() {
		l.journal = journal.Send
	}
	if opts.NoJournal {
		l.journal = nil
	}
	if l.log == nil {
		l.log = hclog.NewNullLogger()
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l
}

// PathFrom picks the audit log path: $DISKCRYPTD_AUDIT_LOG (through getenv) when set,
// else configured when set, else DefaultPath.
func PathFrom(getenv func(string) string, configured string) string {
	if getenv != nil {
		if p := getenv(EnvPath); p != "" {
			return p
		}
	}
	if configured != "" {
		return configured
	}
	return DefaultPath
}

// Path returns the file the Logger appends to ("" when none).
func (l *Logger) Path() string {
	if l == nil {
		return ""
	}
	return l.path
}

// ErrWrite wraps every failure to record an event.
var ErrWrite = errors.New("audit: record not written")

// Emit records r: to journald (when there) and appended to the file, fsynced. It
// returns an error wrapping ErrWrite when either fails; the caller decides whether
// that stops it (the event has already happened).
func (l *Logger) Emit(ctx context.Context, r Record) error {
	if l == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrWrite, err)
	}
	if r.Time.IsZero() {
		r.Time = l.now()
	}
	r.Time = r.Time.UTC()
	if r.Actor == "" {
		r.Actor = l.actor
	}
	if r.Result == "" {
		r.Result = Success
	}
	r.UID, r.PID = os.Getuid(), os.Getpid()
	var errs []error
	if l.journal != nil {
		vars := r.Fields()
		vars["MESSAGE_ID"] = MessageID(r.Kind)
		vars["SYSLOG_IDENTIFIER"] = "diskcryptd"
		prio := journal.PriInfo
		if r.Result != Success {
			prio = journal.PriWarning
		}
		if err := l.journal("audit: "+r.Message(), prio, vars); err != nil {
			errs = append(errs, fmt.Errorf("journald: %w", err))
		}
	}
	if l.path != "" {
		if err := l.append(&r); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		err := fmt.Errorf("%w: %s: %w", ErrWrite, r.Kind, errors.Join(errs...))
		l.log.Error("audit record not written", "kind", r.Kind, "error", err)
		return err
	}
	return nil
}

// append writes one line to the file: open (create 0600), one write, fsync, close.
func (l *Logger) append(r *Record) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding record: %w", err)
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return fmt.Errorf("audit log folder: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return fmt.Errorf("audit log: narrowing mode to 0600: %w", err)
		}
	}
	if _, err := f.Write(line); err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit log: fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// ReadFile reads the audit log at path with Read. A missing file is an error matching
// os.ErrNotExist.
func ReadFile(path string, since time.Time) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	return Read(f, since)
}

// ErrFormat is wrapped by Read for a line that is not an audit record.
var ErrFormat = errors.New("audit: malformed record")

// maxLine bounds one record line when reading.
const maxLine = 1 << 20

// Read parses a JSON Lines audit log and returns the records at or after since (all
// when since is zero), in file order. Fields it does not know are ignored (records of
// a newer version still read). Empty lines are skipped; a malformed line is an
// error wrapping ErrFormat that names its line number, returned with the records read
// so far.
func Read(r io.Reader, since time.Time) ([]Record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	var out []Record
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return out, fmt.Errorf("%w: line %d: %v", ErrFormat, n, err)
		}
		if rec.Kind == "" || rec.Time.IsZero() {
			return out, fmt.Errorf("%w: line %d: no kind or time", ErrFormat, n)
		}
		if !since.IsZero() && rec.Time.Before(since) {
			continue
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	return out, nil
}
