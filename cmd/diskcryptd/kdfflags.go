package main

import (
	"time"

	"github.com/diskcryptd/diskcryptd/luks2"
)

// kdfFlags are the keyslot KDF flags, named as cryptsetup names them.
type kdfFlags struct {
	pbkdf      string
	memory     int
	parallel   int
	iterations int
	hash       string
	iterTimeMS int
}

func (k *kdfFlags) register(f *flagSet) {
	f.StringVar(&k.pbkdf, "pbkdf", "", "keyslot KDF: argon2id (default), argon2i or pbkdf2")
	f.IntVar(&k.memory, "pbkdf-memory", 0, "Argon2 memory cost in KiB (default: benchmarked, at most 1 GiB and half of RAM)")
	f.IntVar(&k.parallel, "pbkdf-parallel", 0, "Argon2 lanes (default: min(4, CPUs))")
	f.IntVar(&k.iterations, "pbkdf-force-iterations", 0, "fixed PBKDF2 iterations or Argon2 time cost; skips the benchmark")
	f.StringVar(&k.hash, "hash", "", "PBKDF2 hash: sha256 (default), sha512 or sha1")
	f.IntVar(&k.iterTimeMS, "iter-time", 0, "KDF benchmark target in milliseconds (default 2000)")
}

func (k *kdfFlags) options() luks2.KDFOptions {
	return luks2.KDFOptions{
		Type: k.pbkdf, Hash: k.hash, Iterations: k.iterations, MemoryKiB: k.memory,
		Parallel: k.parallel, IterTime: time.Duration(k.iterTimeMS) * time.Millisecond,
	}
}
