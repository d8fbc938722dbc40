package reencrypt

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/xts"
)

var (
	// ErrUnsupported means the volume or the re-encryption in progress uses
	// something this package does not run (another mode or direction, data shift,
	// a cipher other than aes-xts-plain64, several data segments); cryptsetup can.
	ErrUnsupported = errors.New("reencrypt: unsupported")
	// ErrInvalid means the re-encryption metadata is inconsistent.
	ErrInvalid = errors.New("reencrypt: invalid re-encryption metadata")
	// ErrInProgress means a re-encryption is already in progress: resume it.
	ErrInProgress = errors.New("reencrypt: re-encryption already in progress; resume it (diskcryptd reencrypt --resume-only)")
	// ErrNotInProgress means Resume found nothing to resume.
	ErrNotInProgress = errors.New("reencrypt: no re-encryption in progress")
	// ErrOtherKeyslots means the volume has keyslots the passphrase does not open:
	// rotation would drop them (their passphrases and tokens would stop working).
	ErrOtherKeyslots = errors.New("reencrypt: the volume has other keyslots, which rotation removes; re-enroll them afterwards, or confirm with --drop-other-keyslots")
	// ErrInterrupted means the run stopped at a resumable point because ctx ended.
	ErrInterrupted = errors.New("reencrypt: interrupted; resume with diskcryptd reencrypt --resume-only")
)

// Defaults.
const (
	// DefaultHotzone is the largest hotzone (data rewritten between two metadata
	// commits) for checksum resilience.
	DefaultHotzone = 64 << 20
	// chunk is the I/O unit inside a hotzone.
	chunk = 4 << 20
)

// Options control a run. The zero value is usable: checksum resilience, 64 MiB
// hotzones, both cores, cryptsetup's default KDF for the new keyslot.
type Options struct {
	// Keyslot chooses the KDF and priority of the keyslot for the new key.
	Keyslot luks2.KeyslotOptions
	// Resilience is "checksum" (default) or "journal".
	Resilience string
	// HotzoneSize bounds the hotzone in bytes (0: DefaultHotzone; journal also by
	// the resilience area).
	HotzoneSize int64
	// Workers is the number of goroutines per stage (0: GOMAXPROCS). Tests use 1 to
	// make the order of writes deterministic.
	Workers int
	// DropOtherKeyslots allows rotation of a volume with keyslots the passphrase
	// does not open; they are removed at the end (as cryptsetup does).
	DropOtherKeyslots bool
	// Logger receives progress at debug level; nil discards.
	Logger hclog.Logger
	// Progress, when set, is called after every hotzone.
	Progress func(Progress)
	// noMap turns off the mapped data path (tests compare both paths).
	noMap bool
	// killAt, when positive, makes the run kill its own process with SIGKILL in
	// the middle of the data write that covers this data offset, leaving what a
	// real kill there would (tests: a kill -9 at an exact point).
	killAt int64
	// DigestIterations sets the pbkdf2 iterations of the new key's digest (0:
	// benchmarked, as luksFormat does).
	DigestIterations int
	// Online, when set, re-encrypts a volume that is mapped (and possibly
	// mounted and in use) under this mapping; see Online.
	Online *Online
}

// Progress reports how far a run is.
type Progress struct {
	// Done and Total are bytes of data re-encrypted and to re-encrypt.
	Done, Total int64
	// Resumed is how many bytes were already done when this run started.
	Resumed int64
	// Elapsed is the time since this run started.
	Elapsed time.Duration
	// Finished is set on the last report.
	Finished bool
}

func (o *Options) workers() int {
	if o.Workers > 0 {
		return o.Workers
	}
	return runtime.GOMAXPROCS(0)
}

func (o *Options) logger() hclog.Logger {
	if o.Logger == nil {
		return hclog.NewNullLogger()
	}
	return o.Logger
}

// Rotate gives the volume on dev (size bytes) a new random volume key and
// re-encrypts all data with it, offline. passphrase (or key file contents) must open
// a keyslot; the new key gets a keyslot for the same passphrase, and the keyslots of
// the old key are removed at the end. Each step is committed so that an interruption
// at any write leaves a volume that Resume (or cryptsetup repair + reencrypt
// --resume-only) finishes.
func Rotate(ctx context.Context, dev luks2.Device, size int64, passphrase []byte, o *Options) error {
	if o == nil {
		o = &Options{}
	}
	v, err := luks2.OpenDevice(dev, size, luks2.ReadWrite)
	if err != nil {
		return err
	}
	if _, err := v.Reencryption(); err == nil {
		return ErrInProgress
	} else if !errors.Is(err, luks2.ErrNotReencrypting) {
		return err
	}
	md := v.Metadata()
	if md.ReadOnly {
		return fmt.Errorf("%w: requirements %v", ErrUnsupported, md.Requirements)
	}
	if md.Cipher != "aes-xts-plain64" || !md.DynamicSize {
		return fmt.Errorf("%w: data segment %s (dynamic %v)", ErrUnsupported, md.Cipher, md.DynamicSize)
	}
	oldVK, slot, err := v.Unlock(ctx, passphrase)
	if err != nil {
		return err
	}
	defer oldVK.Wipe()
	// Keyslots of the old key other than the one opened would be removed at the
	// end. A keyslot of another key that the passphrase opens is the new key of an
	// interrupted start (killed between its two commits): take it up again.
	oldDigest := keyslotInfo(md, slot).Digest
	var newVK *luks2.VolumeKey
	did := -1
	for _, ks := range md.Keyslots {
		if ks.ID == slot || ks.Type != "luks2" {
			continue
		}
		if ks.Digest == oldDigest {
			if !o.DropOtherKeyslots {
				return fmt.Errorf("%w (keyslot %d)", ErrOtherKeyslots, ks.ID)
			}
			continue
		}
		if newVK != nil {
			continue
		}
		if k, err := v.UnlockKeyslot(ctx, ks.ID, passphrase); err == nil {
			o.logger().Info("reusing the new key of an interrupted start", "keyslot", ks.ID)
			newVK, did = k, ks.Digest
		}
	}
	if newVK == nil {
		if newVK, err = randomKey(oldVK.Len()); err != nil {
			return err
		}
		ksOpts := o.Keyslot
		ksOpts.Priority = keyslotInfo(md, slot).Priority
		if _, did, err = v.AddUnboundKeyslot(ctx, newVK, passphrase, luks2.AnySlot, &ksOpts, o.DigestIterations); err != nil {
			newVK.Wipe()
			return err
		}
	}
	defer newVK.Wipe()
	res := o.Resilience
	if res == "" {
		res = "checksum"
	}
	block := 4096
	if md.SectorSize > block {
		block = md.SectorSize
	}
	if md.DataSize%int64(block) != 0 {
		block = md.SectorSize
	}
	final := luks2.Segment{Type: "crypt", Offset: uint64(md.DataOffset), Dynamic: true, IVTweak: md.IVTweak,
		Encryption: md.Cipher, SectorSize: md.SectorSize}
	init := luks2.ReencryptInit{NewDigest: did, Final: final, Resilience: res, Hash: "sha256", ChecksumBlock: block}
	if err := v.BeginReencrypt(init, oldVK, newVK); err != nil {
		return err
	}
	o.logger().Info("re-encryption initialized", "resilience", res, "data_offset", md.DataOffset, "data_size", md.DataSize)
	return run(ctx, v, dev, size, oldVK, newVK, o)
}

func keyslotInfo(md *luks2.Metadata, id int) *luks2.KeyslotInfo {
	for i := range md.Keyslots {
		if md.Keyslots[i].ID == id {
			return &md.Keyslots[i]
		}
	}
	return nil
}

// randomKey returns a random key of n bytes whose two XTS halves differ (OpenSSL,
// and so cryptsetup, refuse equal halves).
func randomKey(n int) (*luks2.VolumeKey, error) {
	b := make([]byte, n)
	defer clear(b)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("reencrypt: random: %w", err)
		}
		if !bytes.Equal(b[:n/2], b[n/2:]) {
			return luks2.NewVolumeKey(b), nil
		}
	}
}

// Resume finishes a re-encryption in progress on dev, whether this package or
// cryptsetup started it: it verifies the re-encryption digest with both keys
// (opened with passphrase), recovers an interrupted hotzone, and goes on. It also
// finishes cryptsetup's in-place encryption (`cryptsetup reencrypt --encrypt
// --reduce-device-size`, mode encrypt with datashift resilience) started with
// --init-only or interrupted.
func Resume(ctx context.Context, dev luks2.Device, size int64, passphrase []byte, o *Options) error {
	if o == nil {
		o = &Options{}
	}
	v, err := luks2.OpenDevice(dev, size, luks2.ReadWrite)
	if err != nil {
		return err
	}
	r, err := v.Reencryption()
	if errors.Is(err, luks2.ErrNotReencrypting) {
		return ErrNotInProgress
	}
	if err != nil {
		return err
	}
	if r.Keyslot.Mode == "encrypt" {
		return resumeEncrypt(ctx, v, dev, passphrase, r, o)
	}
	oldVK, _, err := v.UnlockDigest(ctx, passphrase, r.DigestOld)
	if err != nil {
		return fmt.Errorf("reencrypt: old key: %w", err)
	}
	defer oldVK.Wipe()
	newVK, _, err := v.UnlockDigest(ctx, passphrase, r.DigestNew)
	if err != nil {
		return fmt.Errorf("reencrypt: new key: %w", err)
	}
	defer newVK.Wipe()
	return run(ctx, v, dev, size, oldVK, newVK, o)
}

// engine holds what a run needs.
type engine struct {
	v          *luks2.Volume
	dev        device
	p          *plan
	oldC, newC *xts.Cipher
	o          *Options
	log        hclog.Logger
	// mm maps the device when it is a file whose data is page aligned (nil: read
	// and write through dev).
	mm      *mapper
	scratch sync.Pool
}

// device is the data path of the volume.
type device interface {
	ReadAt([]byte, int64) (int, error)
	WriteAt([]byte, int64) (int, error)
	Sync() error
}

func run(ctx context.Context, v *luks2.Volume, dev device, size int64, oldVK, newVK *luks2.VolumeKey, o *Options) error {
	if err := v.VerifyReencryptDigest(oldVK, newVK); err != nil {
		return err
	}
	r, err := v.Reencryption()
	if err != nil {
		return err
	}
	p, err := loadPlan(r, size)
	if err != nil {
		return err
	}
	oldC, err := xts.New(oldVK.Bytes())
	if err != nil {
		return err
	}
	defer oldC.Close()
	newC, err := xts.New(newVK.Bytes())
	if err != nil {
		return err
	}
	defer newC.Close()
	e := &engine{v: v, dev: dev, p: p, oldC: oldC, newC: newC, o: o, log: o.logger()}
	e.scratch.New = func() any { b := make([]byte, chunk); return &b }
	if o.Online != nil {
		return e.runOnline(ctx, r, oldVK, newVK)
	}
	if !o.noMap && p.dataOffset%uint64(pageSize()) == 0 {
		e.mm = newMapper(dev)
	}
	if r.Crashed() {
		if err := e.recover(ctx); err != nil {
			return err
		}
	}
	return e.loop(ctx)
}

// hotzoneLen returns the hotzone length for this run.
func (e *engine) hotzoneLen() uint64 {
	k := e.p.r.Keyslot
	align := uint64(max(e.p.prev.SectorSize, e.p.final.SectorSize))
	n := uint64(DefaultHotzone)
	if e.o.HotzoneSize > 0 {
		n = uint64(e.o.HotzoneSize)
	}
	switch k.Resilience {
	case "checksum":
		align = uint64(k.SectorSize)
		hs := uint64(hashSize(k.Hash))
		n = min(n, k.AreaSize/hs*uint64(k.SectorSize))
	case "journal":
		n = min(n, k.AreaSize)
	}
	n -= n % align
	return max(n, align)
}

// zone is one hotzone in memory: the old ciphertext and its checksums.
type zone struct {
	off, n uint64
	// buf holds the old ciphertext: a copy, or the mapped device window.
	buf    []byte
	mapped bool
	sums   []byte
	err    error
}

// loop re-encrypts from the plan's offset to the end, hotzone by hotzone, reading
// and checksumming the next hotzone while the current one is rewritten.
func (e *engine) loop(ctx context.Context) error {
	start := time.Now()
	resumed := e.p.offset
	hz := e.hotzoneLen()
	report := func(done uint64, finished bool) {
		if e.o.Progress != nil {
			e.o.Progress(Progress{Done: int64(done), Total: int64(e.p.total), Resumed: int64(resumed), Elapsed: time.Since(start), Finished: finished})
		}
	}
	report(e.p.offset, false)
	if !e.p.done && e.p.offset < e.p.total {
		// Copy buffers, allocated by readZone only when a hotzone is read rather
		// than mapped.
		var bufs [2][]byte
		next := e.readZone(e.p.offset, min(hz, e.p.total-e.p.offset), &bufs[0])
		i := 0
		for {
			cur := <-next
			if cur.err != nil {
				return cur.err
			}
			end := cur.off + cur.n
			var pending chan *zone
			if end < e.p.total {
				pending = e.readZone(end, min(hz, e.p.total-end), &bufs[1-i])
			}
			err := e.rewrite(ctx, cur)
			if err != nil {
				if pending != nil {
					<-pending
				}
				return err
			}
			e.log.Debug("hotzone done", "offset", cur.off, "length", cur.n)
			if pending == nil {
				break
			}
			report(end, false)
			if ctx.Err() != nil {
				<-pending
				return fmt.Errorf("%w (at %d of %d bytes)", ErrInterrupted, end, e.p.total)
			}
			next, i = pending, 1-i
		}
	}
	if err := e.v.FinishReencrypt(ctx); err != nil {
		return err
	}
	report(e.p.total, true)
	e.log.Info("re-encryption finished", "bytes", e.p.total, "elapsed", time.Since(start))
	return nil
}

// readZone maps [off, off+n) of the data, or reads it into *buf (allocated on
// first use; the caller must not touch it until the zone is received), and
// checksums it, in the background.
func (e *engine) readZone(off, n uint64, buf *[]byte) chan *zone {
	ch := make(chan *zone, 1)
	z := &zone{off: off, n: n}
	go func() {
		defer func() { ch <- z }()
		if e.mm != nil && (e.p.dataOffset+off)%uint64(pageSize()) == 0 {
			m, err := e.mm.mapRange(int64(e.p.dataOffset+off), int(n))
			if err != nil {
				z.err = fmt.Errorf("reencrypt: mapping data at %d: %w", e.p.dataOffset+off, err)
				return
			}
			z.buf, z.mapped = m, true
		} else {
			if uint64(cap(*buf)) < n {
				*buf = make([]byte, n)
			}
			z.buf = (*buf)[:n]
		}
		k := e.p.r.Keyslot
		var bs int
		if k.Resilience == "checksum" {
			bs = k.SectorSize
			z.sums = make([]byte, int(n)/bs*hashSize(k.Hash))
		}
		z.err = e.parallel(n, func(a, b uint64) error {
			if !z.mapped {
				if err := readFull(e.dev, z.buf[a:b], int64(e.p.dataOffset+off+a)); err != nil {
					return fmt.Errorf("reencrypt: reading data at %d: %w", e.p.dataOffset+off+a, err)
				}
			}
			if bs == 0 {
				return nil
			}
			return faultGuard(func() {
				h := newHash(k.Hash)
				hs := h.Size()
				for s := a; s < b; s += uint64(bs) {
					h.Reset()
					h.Write(z.buf[s : s+uint64(bs)])
					h.Sum(z.sums[s/uint64(bs)*uint64(hs) : s/uint64(bs)*uint64(hs)])
				}
			})
		})
	}()
	return ch
}

// parallel splits [0, n) in chunks and runs f over them with the configured
// number of workers; chunks are whole checksum blocks and sectors.
func (e *engine) parallel(n uint64, f func(a, b uint64) error) error {
	w := e.o.workers()
	var (
		mu    sync.Mutex
		next  uint64
		first error
		wg    sync.WaitGroup
	)
	take := func() (uint64, uint64, bool) {
		mu.Lock()
		defer mu.Unlock()
		if next >= n || first != nil {
			return 0, 0, false
		}
		a := next
		next = min(n, next+chunk)
		return a, next, true
	}
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				a, b, ok := take()
				if !ok {
					return
				}
				if err := f(a, b); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// rewrite runs one hotzone: resilience data written and synced, the hot segments
// committed, the data re-encrypted and written and synced, the post segments
// committed (the last hotzone's post commit is FinishReencrypt, in loop).
func (e *engine) rewrite(ctx context.Context, z *zone) error {
	switch e.p.r.Keyslot.Resilience {
	case "checksum":
		if err := e.v.WriteReencryptArea(z.sums); err != nil {
			return err
		}
	case "journal":
		if err := e.v.WriteReencryptArea(z.buf); err != nil {
			return err
		}
	}
	if err := e.v.SetReencryptSegments(e.p.hot(z.off, z.n)); err != nil {
		return err
	}
	var err error
	if z.mapped {
		err = e.parallel(z.n, func(a, b uint64) error {
			return e.transformMapped(z.buf[a:b], z.off+a)
		})
		if uerr := e.mm.unmap(z.buf); err == nil {
			err = uerr
		}
		z.buf = nil
	} else {
		err = e.parallel(z.n, func(a, b uint64) error {
			return e.transform(z.buf[a:b], z.off+a)
		})
	}
	if err != nil {
		return err
	}
	if err := e.dev.Sync(); err != nil {
		return fmt.Errorf("reencrypt: sync: %w", err)
	}
	end := z.off + z.n
	if end >= e.p.total {
		return nil
	}
	return e.v.SetReencryptSegments(e.p.post(end))
}

// faultGuard runs f, turning a memory fault (a device read or write error behind
// a mapping, which the kernel reports as SIGBUS) into an error instead of a crash.
func faultGuard(f func()) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reencrypt: device I/O error in a mapped hotzone: %v", r)
		}
	}()
	f()
	return nil
}

// transformMapped re-encrypts b, a window of the mapped device at data offset off:
// it decrypts from the mapping into a scratch buffer, encrypts there and writes the
// result with WriteAt. Never storing into the mapping matters twice: plaintext
// never reaches the device's page cache, and a process killed mid-way leaves whole
// 4 KiB blocks (the kernel copies a write page by page and stops only between
// pages), which checksum recovery needs; stores into a mapping can be cut every 16
// bytes.
func (e *engine) transformMapped(b []byte, off uint64) error {
	sp := e.scratch.Get().(*[]byte)
	defer e.scratch.Put(sp)
	s := (*sp)[:len(b)]
	if err := faultGuard(func() {
		e.oldC.DecryptSectors(s, b, e.p.prev.SectorSize, e.p.prev.IVTweak+off/512)
	}); err != nil {
		// A fault may stop the decryption midway: wipe the plaintext.
		clear(s)
		return err
	}
	// Encrypted in place: s holds no plaintext after this, so it needs no wipe.
	e.newC.EncryptSectors(s, s, e.p.final.SectorSize, e.p.final.IVTweak+off/512)
	return e.writeData(s, off)
}

// transform decrypts b (old ciphertext of the data at off) with the old key,
// encrypts it with the new key and writes it back.
func (e *engine) transform(b []byte, off uint64) error {
	e.oldC.DecryptSectors(b, b, e.p.prev.SectorSize, e.p.prev.IVTweak+off/512)
	e.newC.EncryptSectors(b, b, e.p.final.SectorSize, e.p.final.IVTweak+off/512)
	return e.writeData(b, off)
}

// writeData writes b, new ciphertext, at data offset off with one write call:
// against a kill -9 it is atomic per page (the kernel copies a write into the page
// cache page by page and acts on SIGKILL only between pages).
func (e *engine) writeData(b []byte, off uint64) error {
	pos := int64(e.p.dataOffset + off)
	if k := e.o.killAt; k > 0 && uint64(k) >= off && uint64(k) < off+uint64(len(b)) {
		// What a kill at data offset k leaves: the whole pages before it.
		end := pos + (k - int64(off))
		end -= end % int64(pageSize())
		if end > pos {
			e.dev.WriteAt(b[:end-pos], pos)
		}
		killSelf()
	}
	if _, err := e.dev.WriteAt(b, pos); err != nil {
		return fmt.Errorf("reencrypt: writing data at %d: %w", pos, err)
	}
	return nil
}

// recover repairs the hotzone an interrupted run was writing, as cryptsetup's
// reencrypt_recover_segment does, then commits the post segments.
func (e *engine) recover(ctx context.Context) error {
	var hz luks2.Segment
	for _, s := range e.p.r.Active() {
		if s.HasFlag(luks2.FlagInReencryption) {
			hz = s
		}
	}
	off, n := hz.Offset-e.p.dataOffset, hz.Size
	if hz.Dynamic || n == 0 || off+n > e.p.total {
		return fmt.Errorf("%w: hotzone [%d, +%d)", ErrInvalid, off, n)
	}
	k := e.p.r.Keyslot
	e.log.Info("recovering interrupted hotzone", "offset", off, "length", n, "resilience", k.Resilience)
	switch k.Resilience {
	case "checksum":
		bs := uint64(k.SectorSize)
		hs := uint64(hashSize(k.Hash))
		count := n / bs
		if count*hs > k.AreaSize {
			return fmt.Errorf("%w: hotzone larger than the checksum area", ErrInvalid)
		}
		sums := make([]byte, count*hs)
		if err := e.v.ReadReencryptArea(sums); err != nil {
			return err
		}
		buf := make([]byte, min(n, chunk))
		for a := uint64(0); a < count*bs; a += uint64(len(buf)) {
			b := min(count*bs, a+uint64(len(buf)))
			blk := buf[:b-a]
			if err := readFull(e.dev, blk, int64(e.p.dataOffset+off+a)); err != nil {
				return fmt.Errorf("reencrypt: reading hotzone: %w", err)
			}
			h := newHash(k.Hash)
			var sum []byte
			for s := uint64(0); s < uint64(len(blk)); s += bs {
				h.Reset()
				h.Write(blk[s : s+bs])
				sum = h.Sum(sum[:0])
				i := (a + s) / bs
				if bytes.Equal(sum, sums[i*hs:(i+1)*hs]) {
					// Still the old ciphertext: rewrite it.
					if err := e.transform(blk[s:s+bs], off+a+s); err != nil {
						return err
					}
				}
			}
		}
	case "journal":
		if n > k.AreaSize {
			return fmt.Errorf("%w: hotzone larger than the journal", ErrInvalid)
		}
		buf := make([]byte, n)
		if err := e.v.ReadReencryptArea(buf); err != nil {
			return err
		}
		if err := e.transform(buf, off); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: resilience %q", ErrUnsupported, k.Resilience)
	}
	if err := e.dev.Sync(); err != nil {
		return fmt.Errorf("reencrypt: sync: %w", err)
	}
	if err := e.v.SetReencryptSegments(e.p.post(off + n)); err != nil {
		return err
	}
	e.p.offset = off + n
	e.p.done = e.p.offset >= e.p.total
	return nil
}

func hashSize(name string) int { return newHash(name).Size() }

func newHash(name string) hash.Hash {
	switch name {
	case "sha1":
		return sha1.New()
	case "sha512":
		return sha512.New()
	}
	return sha256.New()
}

func readFull(d device, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := d.ReadAt(b, off)
		b, off = b[n:], off+int64(n)
		if len(b) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("short read at %d", off)
		}
	}
	return nil
}
