package unlock

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestEnrollmentRedacted: an Enrollment printed, logged or marshalled never shows its
// passphrase.
func TestEnrollmentRedacted(t *testing.T) {
	const canary = "canary-passphrase-6f1d"
	e := &Enrollment{Passphrase: []byte(canary), Token: map[string]any{"type": "clevis"}}
	var logs strings.Builder
	hclog.New(&hclog.LoggerOptions{Output: &logs}).Info("enrolled", "enrollment", e)
	for name, s := range map[string]string{
		"%v": fmt.Sprintf("%v", e), "%s": fmt.Sprintf("%s", e), "%+v": fmt.Sprintf("%+v", e),
		"%#v": fmt.Sprintf("%#v", e), "hclog": logs.String(),
	} {
		if strings.Contains(s, canary) || strings.Contains(s, fmt.Sprint([]byte(canary))) {
			t.Errorf("%s shows the passphrase: %s", name, s)
		}
	}
	if b, err := json.Marshal(e); err == nil {
		t.Errorf("json.Marshal gave %s", b)
	}
}
