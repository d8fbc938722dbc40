//go:build !race

package kms_test

// raceEnabled is true under the race detector.
const raceEnabled = false
