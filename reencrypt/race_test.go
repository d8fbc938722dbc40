//go:build race

package reencrypt

// raceEnabled: the race detector slows the crash harness; it samples fewer cuts.
const raceEnabled = true
