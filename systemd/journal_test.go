package systemd

import (
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/hashicorp/go-hclog"
)

// TestJournalFields checks how log lines become journal entries: structured fields
// from key-value pairs (including those of With), MESSAGE_ID for known events, the
// priority, and the level filter.
func TestJournalFields(t *testing.T) {
	type entry struct {
		msg  string
		pri  journal.Priority
		vars map[string]string
	}
	var got []entry
	sink := &JournalSink{Level: hclog.Info, send: func(m string, p journal.Priority, v map[string]string) error {
		got = append(got, entry{m, p, v})
		return nil
	}}
	log := NewJournalLogger("diskcryptd", hclog.Info, sink)
	log.Debug("dropped", "x", 1)
	log.With("volume", "data0").Info("volume unlocked", "token", 0, "type", "systemd-tpm2", "protector", "tpm2", "MESSAGE", "spoof", "9lives", 1)
	log.With("volume", "data1").Error("volume not unlocked", "state", "locked", "error", "PCRs changed")
	log.Warn("plain", "dm-uuid", "CRYPT-LUKS2-x")
	if len(got) != 3 {
		t.Fatalf("got %d entries; want 3 (debug filtered): %+v", len(got), got)
	}
	tests := []struct {
		i    int
		msg  string
		pri  journal.Priority
		want map[string]string
		none []string
	}{
		{0, "volume unlocked volume=data0 token=0 type=systemd-tpm2 protector=tpm2 MESSAGE=spoof 9lives=1", journal.PriInfo, map[string]string{"VOLUME": "data0", "TOKEN": "0", "TYPE": "systemd-tpm2",
			"PROTECTOR": "tpm2", "MESSAGE_ID": MessageVolumeUnlocked, "SYSLOG_IDENTIFIER": "diskcryptd", "LIVES": "1"}, []string{"MESSAGE"}},
		{1, `volume not unlocked volume=data1 state=locked error="PCRs changed"`, journal.PriErr, map[string]string{"VOLUME": "data1", "STATE": "locked", "ERROR": "PCRs changed",
			"MESSAGE_ID": MessageVolumeNotUnlocked}, nil},
		{2, "plain dm-uuid=CRYPT-LUKS2-x", journal.PriWarning, map[string]string{"DM_UUID": "CRYPT-LUKS2-x"}, []string{"MESSAGE_ID"}},
	}
	for _, tc := range tests {
		e := got[tc.i]
		if e.msg != tc.msg || e.pri != tc.pri {
			t.Errorf("entry %d: %q priority %d; want %q %d", tc.i, e.msg, e.pri, tc.msg, tc.pri)
		}
		for k, v := range tc.want {
			if e.vars[k] != v {
				t.Errorf("entry %d: %s=%q; want %q (all: %v)", tc.i, k, e.vars[k], v, e.vars)
			}
		}
		for _, k := range tc.none {
			if _, ok := e.vars[k]; ok {
				t.Errorf("entry %d: unexpected field %s=%q", tc.i, k, e.vars[k])
			}
		}
	}
}

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{"volume": "VOLUME", "dm-uuid": "DM_UUID", "_x": "X", "1a": "A", "": ""} {
		if got := fieldName(in); got != want {
			t.Errorf("fieldName(%q) = %q; want %q", in, got, want)
		}
	}
}
