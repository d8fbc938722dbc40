package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// auditPath is the audit log the command line appends to: $DISKCRYPTD_AUDIT_LOG, else
// the default configuration's audit-log setting, else audit.DefaultPath.
func auditPath(e *env) string {
	if p := e.getenv(audit.EnvPath); p != "" {
		return p
	}
	configured := ""
	if fh, err := os.Open(defaultConfig); err == nil {
		if cfg, err := daemon.ParseConfig(fh); err == nil {
			configured = cfg.AuditLog
		}
		fh.Close()
	}
	return audit.PathFrom(e.getenv, configured)
}

// auditLogger returns the command line's audit logger.
func auditLogger(e *env) *audit.Logger {
	return audit.New(audit.Options{Path: auditPath(e), Actor: "cli", Logger: e.log})
}

// auditEvent records a key-management change made by the command line; err is the
// change's outcome. A record that cannot be written is a warning: the change is done.
func auditEvent(ctx context.Context, e *env, r audit.Record, err error) {
	if err != nil {
		r.Result, r.Error = audit.Failure, err.Error()
	}
	if aerr := auditLogger(e).Emit(ctx, r); aerr != nil {
		fmt.Fprintf(e.stderr, "diskcryptd: warning: %v\n", aerr)
	}
}

// volumeRecord is the start of a record about volume v on device.
func volumeRecord(kind audit.Kind, device string, v *luks2.Volume) audit.Record {
	r := audit.Record{Kind: kind, Device: device}
	if v != nil {
		r.VolumeUUID = v.Metadata().UUID
	}
	return r
}

// auditedTPM is the TPM2 protector that also says, for the audit log, which PCR bank
// and values a key release went through.
type auditedTPM struct {
	*tpm.Protector
	device string
}

var _ daemon.ReleaseDescriber = auditedTPM{}

// DescribeRelease implements daemon.ReleaseDescriber: the token's bank and PCRs, with
// the values the TPM holds now (public measurements, not secrets).
func (p auditedTPM) DescribeRelease(ctx context.Context, tok unlock.Token, r *audit.Record) {
	st, err := tpm.ParseSystemdToken(tok.JSON)
	if err != nil {
		return
	}
	pcrs := st.PCRs
	if len(st.PubkeyPCRs) > 0 {
		pcrs = append(append([]int(nil), pcrs...), st.PubkeyPCRs...)
	}
	r.PCRBank = st.PCRBank
	if r.PCRBank == "" {
		r.PCRBank = "sha256"
	}
	if len(pcrs) == 0 {
		return
	}
	bank, err := tpm.ParseBank(r.PCRBank)
	if err != nil {
		return
	}
	t, err := tpm.Open(p.device)
	if err != nil {
		r.Detail = "PCR values not read: " + err.Error()
		return
	}
	defer t.Close()
	vals, err := tpm.ReadPCRs(ctx, t, bank, pcrs)
	if err != nil {
		r.Detail = "PCR values not read: " + err.Error()
		return
	}
	r.PCRs = make(map[string]string, len(vals))
	for i, v := range vals {
		r.PCRs[strconv.Itoa(i)] = hex.EncodeToString(v)
	}
}

func cmdAudit(_ context.Context, e *env, args []string) error {
	f := newFlags(e, "audit", "[--since TIME|DURATION] [--json] [--file F]")
	since := f.String("since", "", "only records at or after this time: RFC 3339 (2026-11-23T06:00:00Z), a date (2026-11-23), or a duration ago (24h)")
	asJSON := f.Bool("json", false, "print the records as a JSON array")
	file := f.String("file", "", "the audit log (default: $DISKCRYPTD_AUDIT_LOG, the configuration's audit-log, or "+audit.DefaultPath+")")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	t, err := parseSince(*since, time.Now())
	if err != nil {
		return err
	}
	path := *file
	if path == "" {
		path = auditPath(e)
	}
	if path == "none" {
		return usageErrorf("the audit log file is disabled (audit-log none); read the journal: journalctl SYSLOG_IDENTIFIER=diskcryptd")
	}
	recs, err := audit.ReadFile(path, t)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if *asJSON {
		if recs == nil {
			recs = []audit.Record{}
		}
		return writeJSON(e.stdout, recs)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTOR\tEVENT")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Time.UTC().Format(time.RFC3339), orDash(r.Actor), r.Message())
	}
	return tw.Flush()
}

// parseSince reads --since: RFC 3339, a date, or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usageErrorf("--since %q: want RFC 3339 (2026-11-23T06:00:00Z), a date (2026-11-23) or a duration ago (24h)", s)
}
