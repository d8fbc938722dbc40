package kms

import (
	"context"

	"github.com/ovh/kmip-go/payloads"
)

// Destroy destroys the object uid (a KEK or a get-mode secret). A KMS refuses to
// destroy an active key: Revoke it first. Once destroyed, no copy of a token made
// under it (a header backup, an imaged disk) ever unwraps again: the remote half of a
// crypto-erase.
func (p *Protector) Destroy(ctx context.Context, servers []string, uid string) error {
	_, err := p.run(ctx, "destroy", servers, func(ctx context.Context, s *session) (string, error) {
		_, corr, err := s.request(ctx, &payloads.DestroyRequestPayload{UniqueIdentifier: uid})
		return corr, err
	})
	return err
}
