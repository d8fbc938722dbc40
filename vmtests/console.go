package vmtests

import (
	"context"
	"os"
	"strings"
	"time"
)

// ConsoleReply is text the host types on the guest's serial console once the console
// shows a prompt: e.g. a recovery key at the initramfs's passphrase prompt.
type ConsoleReply struct {
	// When is the console text that triggers the reply.
	When string
	// Send is written to the serial port's input, as typed.
	Send string
}

// consoleInput returns the read end of a pipe for QEMU's standard input (the serial
// port) and types each of m.ConsoleReplies into it, in order, once its prompt appears
// in the console log; nil when the machine has none.
func (m *Machine) consoleInput(ctx context.Context, console string) *os.File {
	if len(m.ConsoleReplies) == 0 {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		m.Logf("console input: %v", err)
		return nil
	}
	go func() {
		defer w.Close()
		from := 0 // console offset after the previous prompt
		for _, reply := range m.ConsoleReplies {
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
				log, err := os.ReadFile(console)
				if err != nil || len(log) < from {
					continue
				}
				if i := strings.Index(string(log[from:]), reply.When); i >= 0 {
					from += i + len(reply.When)
					break
				}
			}
			m.Logf("console: typing a reply after %q", reply.When)
			if _, err := w.WriteString(reply.Send); err != nil {
				m.Logf("console input: %v", err)
				return
			}
		}
		<-ctx.Done()
	}()
	return r
}
