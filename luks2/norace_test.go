//go:build !race

package luks2

const raceEnabled = false
