//go:build race

package luks2

// raceEnabled makes the slowest exhaustive tests sample more coarsely under the race
// detector, which slows the keyslot code tenfold.
const raceEnabled = true
