//go:build !unix

package reencrypt

// mapper is unavailable here: the engine reads and writes through the device.
type mapper struct{}

func newMapper(device) *mapper                        { return nil }
func (m *mapper) mapRange(int64, int) ([]byte, error) { return nil, nil }
func (m *mapper) sync([]byte) error                   { return nil }
func (m *mapper) unmap([]byte) error                  { return nil }
func pageSize() int                                   { return 4096 }

// killSelf ends the process (tests: Options.killAt).
func killSelf() { panic("reencrypt: test kill point reached") }
