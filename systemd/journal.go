package systemd

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/hashicorp/go-hclog"
)

// Message IDs of the events an operator or a monitoring rule looks for in the journal
// (journalctl MESSAGE_ID=...). They are fixed for the life of the project, as
// systemd's catalog IDs are.
const (
	// MessageVolumeUnlocked marks "volume unlocked": VOLUME=, TOKEN=, TOKEN_TYPE=,
	// PROTECTOR=, ELAPSED=.
	MessageVolumeUnlocked = "5b0d3e2a9c1f4e6b8a7d2c4f1e3b5a90"
	// MessageVolumeNotUnlocked marks "volume not unlocked": VOLUME=, STATE=, ERROR=.
	MessageVolumeNotUnlocked = "c8e1f07b3d2a4c59b6e4a1d0f9c27e13"
	// MessageUnlockPassDone marks the end of the boot-time unlock pass: STATUS=.
	MessageUnlockPassDone = "2f6a9d4e7b1c4830a5e2d9b6c3f18a47"
)

// messageIDs maps the daemon's log messages to their MESSAGE_ID.
var messageIDs = map[string]string{
	"volume unlocked":     MessageVolumeUnlocked,
	"volume not unlocked": MessageVolumeNotUnlocked,
	"unlock pass done":    MessageUnlockPassDone,
}

// JournalSink is an hclog sink that writes each log line to journald's native
// protocol, with every key-value pair as a structured field (key upper-cased, other
// characters than A-Z, 0-9 and _ replaced by _: "volume" becomes VOLUME=) and a
// MESSAGE_ID for the events listed above. The daemon never logs a secret, so no field
// carries one.
type JournalSink struct {
	// Level is the lowest level sent.
	Level hclog.Level
	// Identifier is SYSLOG_IDENTIFIER ("diskcryptd" when empty).
	Identifier string
	// send is journal.Send unless a test replaces it.
	send func(message string, priority journal.Priority, vars map[string]string) error
}

// JournalLogger returns a logger that writes to journald's native protocol when the
// process's standard error is connected to the journal (a systemd service), and ok
// true; otherwise it returns base unchanged and ok false.
func JournalLogger(base hclog.Logger) (hclog.Logger, bool) {
	if is, err := journal.StderrIsJournalStream(); err != nil || !is || !journal.Enabled() {
		return base, false
	}
	return NewJournalLogger(base.Name(), base.GetLevel(), &JournalSink{Level: base.GetLevel()}), true
}

// NewJournalLogger returns a logger whose only output is sink.
func NewJournalLogger(name string, level hclog.Level, sink *JournalSink) hclog.Logger {
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: name, Level: level, Output: discard{}})
	l.RegisterSink(sink)
	return l
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Accept implements hclog.SinkAdapter.
func (s *JournalSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level < s.Level || level == hclog.Off {
		return
	}
	send := s.send
	if send == nil {
		send = journal.Send
	}
	// Best effort: a full or absent journal must not stop an unlock.
	_ = send(message(msg, args), priority(level), s.fields(name, msg, args))
}

// message is the human line (what journalctl and systemctl status show): the log
// message followed by its key-value pairs, as hclog's text format writes them, so that
// "volume not unlocked" says which volume and why without -o verbose.
func message(msg string, args []any) string {
	var b strings.Builder
	b.WriteString(msg)
	for i := 0; i+1 < len(args); i += 2 {
		v := fmt.Sprint(args[i+1])
		if strings.ContainsAny(v, " \t\n\"=") || v == "" {
			v = strconv.Quote(v)
		}
		fmt.Fprintf(&b, " %v=%s", args[i], v)
	}
	return b.String()
}

func (s *JournalSink) fields(name, msg string, args []any) map[string]string {
	id := s.Identifier
	if id == "" {
		id = "diskcryptd"
	}
	vars := map[string]string{"SYSLOG_IDENTIFIER": id}
	if name != "" && name != id {
		vars["LOGGER"] = name
	}
	if mid, ok := messageIDs[msg]; ok {
		vars["MESSAGE_ID"] = mid
	}
	for i := 0; i+1 < len(args); i += 2 {
		k := fieldName(fmt.Sprint(args[i]))
		if k == "" || reserved(k) {
			continue
		}
		vars[k] = fmt.Sprint(args[i+1])
	}
	return vars
}

// fieldName turns a log key into a journal field name: upper case, A-Z 0-9 _, not
// starting with _ or a digit (journald drops such fields).
func fieldName(k string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(k) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	f := strings.TrimLeft(b.String(), "_0123456789")
	if len(f) > 64 {
		f = f[:64]
	}
	return f
}

// reserved reports fields a log key must not override.
func reserved(f string) bool {
	switch f {
	case "MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC":
		return true
	}
	return false
}

func priority(l hclog.Level) journal.Priority {
	switch {
	case l >= hclog.Error:
		return journal.PriErr
	case l == hclog.Warn:
		return journal.PriWarning
	case l == hclog.Info:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
