//go:build !amd64 || purego

package xts

// implementations lists the ways this build can compute XTS, fastest first.
var implementations = []*implementation{generic}
