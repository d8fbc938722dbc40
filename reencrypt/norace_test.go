//go:build !race

package reencrypt

const raceEnabled = false
