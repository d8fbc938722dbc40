//go:build !unix

package luks2

import "os"

// newLocker returns nil where flock does not exist: on such systems metadata writers
// are not serialized between processes (diskcryptd targets Linux; this build exists
// so that the format package compiles everywhere).
func newLocker(*os.File) deviceLocker { return nil }
