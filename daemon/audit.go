package daemon

import (
	"context"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// ReleaseDescriber is implemented by protectors that can add to the audit record of a
// key release what it went through: the PCR bank and values of a TPM2 token, the KMS
// server and KEK UID, the Tang server. It is called right after the attempt, with
// the TPM or network still the protector's (under the daemon's unseal lock). It must
// not put a secret in the record (the record type has no field for one).
type ReleaseDescriber interface {
	DescribeRelease(ctx context.Context, tok unlock.Token, r *audit.Record)
}

// ReleaseRecords turns an unlock report into one key-release record per attempt, each
// a copy of base with the token, protector and result filled in, and described by the
// protector that claimed the token when it implements ReleaseDescriber.
func ReleaseRecords(ctx context.Context, rep *unlock.Report, prots []unlock.Protector, base audit.Record) []audit.Record {
	if rep == nil {
		return nil
	}
	out := make([]audit.Record, 0, len(rep.Attempts))
	for _, a := range rep.Attempts {
		r := base
		r.Kind = audit.KindKeyRelease
		r.Token = audit.TokenID(a.Token.ID)
		r.TokenType = a.Token.Type
		r.Keyslots = append([]int(nil), a.Token.Keyslots...)
		r.Protector = a.Protector
		r.Result = audit.Success
		if a.Err != nil {
			r.Result, r.Error = audit.Failure, a.Err.Error()
		}
		for _, p := range prots {
			if d, ok := p.(ReleaseDescriber); ok && p.Name() == a.Protector {
				d.DescribeRelease(ctx, a.Token, &r)
				break
			}
		}
		out = append(out, r)
	}
	return out
}

// EmitReleases records the attempts of rep through l (a nil l records nothing).
func EmitReleases(ctx context.Context, l *audit.Logger, rep *unlock.Report, prots []unlock.Protector, base audit.Record) {
	if l == nil {
		return
	}
	for _, r := range ReleaseRecords(ctx, rep, prots, base) {
		l.Emit(ctx, r)
	}
}
