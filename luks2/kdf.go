package luks2

import (
	"bufio"
	"context"
	"fmt"
	"hash"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
)

// KDF type names as they appear in keyslot objects (§3.5.2).
const (
	KDFArgon2id = "argon2id"
	KDFArgon2i  = "argon2i"
	KDFPBKDF2   = "pbkdf2"
)

// Defaults, as cryptsetup 2.6 chooses them.
const (
	// DefaultIterTime is the KDF time target when none is given.
	DefaultIterTime = 2 * time.Second
	// DefaultArgon2MaxMemoryKiB is the Argon2 memory ceiling (1 GiB), further capped
	// at half of the RAM.
	DefaultArgon2MaxMemoryKiB = 1 << 20
	minArgon2Time             = 4
	minArgon2MemoryKiB        = 32 << 10
	// MinPBKDF2Iterations is the lowest PBKDF2 iteration count written (keyslots and
	// digests).
	MinPBKDF2Iterations = 1000
	digestIterTime      = 125 * time.Millisecond
)

// KDFOptions choose a keyslot's key derivation. The zero value means cryptsetup's
// defaults: argon2id benchmarked to DefaultIterTime with up to 1 GiB (at most half of
// the RAM) and min(4, CPUs) lanes.
type KDFOptions struct {
	// Type is KDFArgon2id (default), KDFArgon2i or KDFPBKDF2.
	Type string
	// Hash is the PBKDF2 hash: "sha256" (default), "sha512" or "sha1".
	Hash string
	// Iterations, when > 0, fixes the PBKDF2 iteration count or the Argon2 time
	// cost and skips the benchmark (cryptsetup's --pbkdf-force-iterations).
	Iterations int
	// MemoryKiB is the Argon2 memory cost in KiB: exact when Iterations is set,
	// otherwise the benchmark's ceiling. 0 means the default ceiling.
	MemoryKiB int
	// Parallel is the number of Argon2 lanes; 0 means min(4, CPUs).
	Parallel int
	// IterTime is the benchmark's time target; 0 means DefaultIterTime.
	IterTime time.Duration
}

// MinimumCostKDF returns the KDF for keyslots whose passphrase is a random secret of
// at least 256 bits (TPM, KMS, Tang protectors), as systemd-cryptenroll writes them:
// PBKDF2-SHA512 with 1000 iterations. Never use it for human passphrases.
func MinimumCostKDF() KDFOptions {
	return KDFOptions{Type: KDFPBKDF2, Hash: "sha512", Iterations: MinPBKDF2Iterations}
}

// KDFParams are the resolved parameters of one keyslot's KDF.
type KDFParams struct {
	// Type is KDFArgon2id, KDFArgon2i or KDFPBKDF2.
	Type string `json:"type"`
	// Hash is the PBKDF2 hash (empty for Argon2).
	Hash string `json:"hash,omitempty"`
	// Iterations is the PBKDF2 iteration count (0 for Argon2).
	Iterations int `json:"iterations,omitempty"`
	// Time is the Argon2 time cost (0 for PBKDF2).
	Time int `json:"time,omitempty"`
	// MemoryKiB is the Argon2 memory cost in KiB (0 for PBKDF2).
	MemoryKiB int `json:"memory_kib,omitempty"`
	// Parallel is the number of Argon2 lanes (0 for PBKDF2).
	Parallel int `json:"parallel,omitempty"`
}

// options returns KDFOptions that resolve to exactly p, without a benchmark.
func (p KDFParams) options() KDFOptions {
	if p.Type == KDFPBKDF2 {
		return KDFOptions{Type: p.Type, Hash: p.Hash, Iterations: p.Iterations}
	}
	return KDFOptions{Type: p.Type, Iterations: p.Time, MemoryKiB: p.MemoryKiB, Parallel: p.Parallel}
}

// deriveKeyCtx runs the KDF of p over passphrase and salt. PBKDF2 checks ctx every
// few milliseconds and stops, leaving no work behind, when it ends. Argon2
// (golang.org/x/crypto/argon2) cannot be interrupted: it runs on its own goroutine
// and deriveKeyCtx returns ctx.Err() as soon as ctx ends, but the abandoned
// computation keeps its CPU time and memory until it finishes (its result is then
// wiped). KDFLimits bound how long that can be; see the package doc.
func deriveKeyCtx(ctx context.Context, p KDFParams, passphrase, salt []byte, keyLen int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch p.Type {
	case KDFPBKDF2:
		nh, err := hashFunc(p.Hash)
		if err != nil {
			return nil, err
		}
		if p.Iterations < 1 {
			return nil, fmt.Errorf("%w: pbkdf2 iterations %d", ErrUnsupported, p.Iterations)
		}
		return pbkdf2Ctx(ctx, nh, passphrase, salt, p.Iterations, keyLen)
	case KDFArgon2i, KDFArgon2id:
		if p.Time < 1 || p.MemoryKiB < 8 || p.MemoryKiB > maxArgonMem || p.Parallel < 1 || p.Parallel > maxArgonLanes {
			return nil, fmt.Errorf("%w: argon2 parameters", ErrUnsupported)
		}
		argon := func(pw []byte) []byte {
			if p.Type == KDFArgon2i {
				return argon2.Key(pw, salt, uint32(p.Time), uint32(p.MemoryKiB), uint8(p.Parallel), uint32(keyLen))
			}
			return argon2.IDKey(pw, salt, uint32(p.Time), uint32(p.MemoryKiB), uint8(p.Parallel), uint32(keyLen))
		}
		if ctx.Done() == nil {
			return argon(passphrase), nil
		}
		pw := append([]byte(nil), passphrase...)
		ch := make(chan []byte, 1)
		go func() {
			k := argon(pw)
			wipe(pw)
			ch <- k
		}()
		select {
		case k := <-ch:
			return k, nil
		case <-ctx.Done():
			go func() { wipe(<-ch) }()
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("%w: kdf %q", ErrUnsupported, p.Type)
}

// KDFLimits bound the cost of a KDF that a header asks Unlock to run: a hostile or
// careless header must not exhaust the memory of, or stall, a booting machine.
// Beyond them a keyslot is refused with ErrKDFCost before anything is computed.
type KDFLimits struct {
	// MaxPBKDF2Iterations bounds keyslot and digest PBKDF2 iterations.
	MaxPBKDF2Iterations int64
	// MaxArgon2Time bounds Argon2's time cost (passes).
	MaxArgon2Time int64
	// MaxArgon2MemoryKiB bounds Argon2's memory cost in KiB.
	MaxArgon2MemoryKiB int64
	// MaxArgon2Parallel bounds Argon2's lanes.
	MaxArgon2Parallel int
}

// DefaultKDFLimits returns cryptsetup's limits (lib/crypto_backend/pbkdf_check.c:
// PBKDF2 up to 2^32-1 iterations; Argon2 up to 4 GiB), our stricter Argon2 time
// (2^24) and lanes (16) bounds, and Argon2 memory further bounded by the memory
// available now (MemAvailable in /proc/meminfo, where the system has one): asking
// for more would push the machine into the OOM killer rather than fail.
func DefaultKDFLimits() KDFLimits {
	l := KDFLimits{
		MaxPBKDF2Iterations: maxIterations,
		MaxArgon2Time:       maxArgonTime,
		MaxArgon2MemoryKiB:  maxArgonMem,
		MaxArgon2Parallel:   maxArgonLanes,
	}
	if avail := meminfoKiB("MemAvailable:"); avail > 0 && avail < l.MaxArgon2MemoryKiB {
		l.MaxArgon2MemoryKiB = avail
	}
	return l
}

// check returns ErrKDFCost when p exceeds l.
func (l KDFLimits) check(p KDFParams) error {
	switch p.Type {
	case KDFPBKDF2:
		if int64(p.Iterations) > l.MaxPBKDF2Iterations {
			return fmt.Errorf("%w: pbkdf2 with %d iterations (limit %d)", ErrKDFCost, p.Iterations, l.MaxPBKDF2Iterations)
		}
	case KDFArgon2i, KDFArgon2id:
		if int64(p.MemoryKiB) > l.MaxArgon2MemoryKiB {
			return fmt.Errorf("%w: %s needs %d MiB of memory, %d MiB available", ErrKDFCost, p.Type, p.MemoryKiB>>10, l.MaxArgon2MemoryKiB>>10)
		}
		if int64(p.Time) > l.MaxArgon2Time || p.Parallel > l.MaxArgon2Parallel {
			return fmt.Errorf("%w: %s time %d parallel %d (limits %d, %d)", ErrKDFCost, p.Type, p.Time, p.Parallel, l.MaxArgon2Time, l.MaxArgon2Parallel)
		}
	}
	return nil
}

// totalRAMKiB reads MemTotal from /proc/meminfo; 0 if unknown.
func totalRAMKiB() int64 { return meminfoKiB("MemTotal:") }

// meminfoKiB reads one field of /proc/meminfo in KiB; 0 if unknown (no /proc on
// this system).
func meminfoKiB(field string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 2 && fs[0] == field {
			v, _ := strconv.ParseInt(fs[1], 10, 64)
			return v
		}
	}
	return 0
}

func defaultArgonMemory() int {
	m := int64(DefaultArgon2MaxMemoryKiB)
	if ram := totalRAMKiB(); ram > 0 && ram/2 < m {
		m = ram / 2
	}
	if m < minArgon2MemoryKiB {
		m = minArgon2MemoryKiB
	}
	return int(m)
}

// ResolveKDF turns options into concrete parameters, benchmarking this machine when
// no explicit cost is given (as cryptsetup does). It can take a few seconds.
func ResolveKDF(ctx context.Context, o KDFOptions) (KDFParams, error) {
	typ := o.Type
	if typ == "" {
		typ = KDFArgon2id
	}
	target := o.IterTime
	if target <= 0 {
		target = DefaultIterTime
	}
	switch typ {
	case KDFPBKDF2:
		h := o.Hash
		if h == "" {
			h = "sha256"
		}
		nh, err := hashFunc(h)
		if err != nil {
			return KDFParams{}, err
		}
		p := KDFParams{Type: KDFPBKDF2, Hash: h, Iterations: o.Iterations}
		if p.Iterations <= 0 {
			it, err := benchPBKDF2(ctx, nh, target)
			if err != nil {
				return KDFParams{}, err
			}
			p.Iterations = it
		}
		if p.Iterations > maxIterations {
			return KDFParams{}, fmt.Errorf("%w: pbkdf2 iterations %d", ErrUnsupported, p.Iterations)
		}
		return p, nil
	case KDFArgon2i, KDFArgon2id:
		// cryptsetup ignores --hash for Argon2 keyslots; so do we.
		par := o.Parallel
		if par <= 0 {
			par = min(4, runtime.NumCPU())
		}
		if par > maxArgonLanes {
			return KDFParams{}, fmt.Errorf("%w: argon2 parallel %d (max %d)", ErrUnsupported, par, maxArgonLanes)
		}
		mem := o.MemoryKiB
		if mem <= 0 {
			mem = defaultArgonMemory()
		}
		if mem < 8*par || mem > maxArgonMem {
			return KDFParams{}, fmt.Errorf("%w: argon2 memory %d KiB", ErrUnsupported, mem)
		}
		p := KDFParams{Type: typ, Time: o.Iterations, MemoryKiB: mem, Parallel: par}
		if p.Time > maxArgonTime {
			return KDFParams{}, fmt.Errorf("%w: argon2 time %d", ErrUnsupported, p.Time)
		}
		if p.Time <= 0 {
			t, m, err := benchArgon2(ctx, typ, mem, par, target)
			if err != nil {
				return KDFParams{}, err
			}
			p.Time, p.MemoryKiB = t, m
		}
		return p, nil
	}
	return KDFParams{}, fmt.Errorf("%w: kdf %q", ErrUnsupported, typ)
}

var benchSalt = make([]byte, 32)

// benchPBKDF2 returns the iteration count that takes about target, at least 1000.
func benchPBKDF2(ctx context.Context, nh func() hash.Hash, target time.Duration) (int, error) {
	pw := []byte("diskcryptd pbkdf2 benchmark")
	it := 1000
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		start := time.Now()
		wipe(pbkdf2Key(nh, pw, benchSalt, it, 32))
		d := time.Since(start)
		if d >= 50*time.Millisecond || it >= 1<<26 {
			n := int64(float64(it) * float64(target) / float64(d))
			return int(max(MinPBKDF2Iterations, min(n, maxIterations))), nil
		}
		it *= 4
	}
}

// benchArgon2 measures Argon2 at a modest memory size with time costs 1 and 3 and
// fits cost = memory * (alloc + pass*time): filling fresh memory costs more than a
// pass over it. Memory stays at maxMem unless even the minimum time cost (4) would
// exceed the target; then memory shrinks (not below 32 MiB), as in cryptsetup.
func benchArgon2(ctx context.Context, typ string, maxMem, par int, target time.Duration) (int, int, error) {
	m0 := min(maxMem, 64<<10)
	pw := []byte("diskcryptd argon2 benchmark")
	measure := func(t int) (float64, error) {
		p := KDFParams{Type: typ, Time: t, MemoryKiB: m0, Parallel: par}
		start := time.Now()
		k, err := deriveKeyCtx(ctx, p, pw, benchSalt, 32)
		if err != nil {
			return 0, err
		}
		wipe(k)
		return float64(time.Since(start)) / float64(m0), nil // ns per KiB
	}
	c1, err := measure(1)
	if err != nil {
		return 0, 0, err
	}
	c3, err := measure(3)
	if err != nil {
		return 0, 0, err
	}
	pass := max((c3-c1)/2, 0.01)
	alloc := max(c1-pass, 0)
	cost := func(t, m int) float64 { return float64(m) * (alloc + pass*float64(t)) }
	tgt := float64(target)
	if cost(minArgon2Time, maxMem) <= tgt {
		t := int((tgt/float64(maxMem) - alloc) / pass)
		return max(minArgon2Time, min(t, maxArgonTime)), maxMem, nil
	}
	m := int(tgt / (alloc + pass*minArgon2Time))
	m = max(min(minArgon2MemoryKiB, maxMem), min(m, maxMem))
	return minArgon2Time, m, nil
}

// digestIterations chooses the digest's PBKDF2 iterations: ~125 ms, at least 1000.
func digestIterations(ctx context.Context, hashName string) (int, error) {
	nh, err := hashFunc(hashName)
	if err != nil {
		return 0, err
	}
	return benchPBKDF2(ctx, nh, digestIterTime)
}
