package main

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/diskcryptd/diskcryptd/audit"
	"github.com/diskcryptd/diskcryptd/daemon"
	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/tpmkey"
	"github.com/diskcryptd/diskcryptd/luks2"
	"github.com/diskcryptd/diskcryptd/tpm"
	"github.com/diskcryptd/diskcryptd/unlock"
	"github.com/google/go-tpm/tpm2/transport"
)

// kmipFlags are the KMIP flags shared by enroll kmip, unlock and kms.
type kmipFlags struct {
	servers string
	ca      string
	cert    string
	key     string
	kek     string
	mode    string
	attempt time.Duration
	// tpmDevice is the TPM of a --kmip-key tpm2:FILE key.
	tpmDevice string
}

func (k *kmipFlags) register(f *flagSet, enroll bool) {
	f.StringVar(&k.ca, "kmip-ca", "", "PEM file of the CA that signs the KMIP servers' certificates")
	f.StringVar(&k.cert, "kmip-cert", "", "PEM file of this host's client certificate")
	f.StringVar(&k.key, "kmip-key", "", "PEM file of this host's client key, or tpm2:FILE for a key held by the TPM (kms csr)")
	f.DurationVar(&k.attempt, "kmip-attempt-timeout", 5*time.Second, "bound of one KMIP attempt (connect, TLS, response)")
	if enroll {
		f.StringVar(&k.servers, "kmip-server", "", "KMIP servers HOST:PORT[,HOST:PORT...], tried in order")
		f.StringVar(&k.kek, "kmip-kek", "", "UID of the KEK (wrap) or secret (get) in the KMS; default: create one")
		f.StringVar(&k.mode, "kmip-mode", kms.ModeWrap, "wrap (KMS encrypts the secret) or get (KMS stores the secret)")
	} else {
		f.StringVar(&k.servers, "kmip-server", "", "KMIP servers HOST:PORT[,...] instead of the token's")
	}
}

// configured reports whether any TLS flag was given.
func (k *kmipFlags) configured() bool { return k.ca != "" || k.cert != "" || k.key != "" }

// protector builds the KMIP protector from the flags.
func (k *kmipFlags) protector(e *env) (*kms.Protector, error) {
	if k.ca == "" || k.cert == "" || k.key == "" {
		return nil, usageErrorf("KMIP needs mutual TLS: pass --kmip-ca, --kmip-cert and --kmip-key")
	}
	// The client key is the host's identity to the KMS: refused, like a key file,
	// when group or others may access it (--allow-insecure-key-file overrides).
	if !strings.HasPrefix(k.key, "tpm2:") {
		f, err := openSecretFile(e, k.key)
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	return newKMIPProtector(e, k.ca, k.cert, k.key, k.tpmDevice, k.servers, k.attempt)
}

// newKMIPProtector builds a KMIP protector from PEM files (shared by the flags and
// the daemon's configuration); key "tpm2:FILE" is a TPM-held key on tpmDevice.
func newKMIPProtector(e *env, ca, cert, key, tpmDevice, servers string, attempt time.Duration) (*kms.Protector, error) {
	var signer crypto.Signer
	if blobFile, ok := strings.CutPrefix(key, "tpm2:"); ok {
		blob, err := tpmkey.ReadFile(blobFile)
		if err != nil {
			return nil, withCode(exitUsage, "", err)
		}
		s, err := tpmkey.NewSigner(blob, func(ctx context.Context) (transport.TPMCloser, error) {
			return tpm.OpenContext(ctx, tpmDevice)
		})
		if err != nil {
			return nil, withCode(exitUsage, "", err)
		}
		signer, key = s, ""
	}
	id, err := kms.TLSFiles(ca, cert, key, signer)
	if err != nil {
		return nil, withCode(exitUsage, "", err)
	}
	cfg := kms.Config{Identity: id, Logger: e.log, Timing: kms.Timing{Attempt: attempt}}
	if servers != "" {
		if cfg.Servers, err = kms.ParseServers(servers); err != nil {
			return nil, withCode(exitUsage, "", err)
		}
	}
	return kms.New(cfg)
}

// unlockProtector returns the protector "unlock" tries for KMIP tokens: the real one
// when the TLS flags are given, else one that says which flags a KMIP token needs.
func (k *kmipFlags) unlockProtector(e *env) (unlock.Protector, error) {
	if !k.configured() {
		return kmipUnconfigured{}, nil
	}
	return k.protector(e)
}

// kmipUnconfigured claims KMIP tokens when no TLS identity was given, so the report
// says what is missing instead of "no protector handles".
type kmipUnconfigured struct{}

func (kmipUnconfigured) Name() string { return kms.Name }
func (kmipUnconfigured) Unseal(_ context.Context, tok unlock.Token) ([]byte, error) {
	if tok.Type != kms.TokenType {
		return nil, unlock.ErrNotMine
	}
	return nil, errors.New("a KMIP token needs --kmip-ca, --kmip-cert and --kmip-key (or kmip-ca, kmip-cert, kmip-key in the daemon's configuration)")
}

// freeKeyslot returns the lowest keyslot number v does not use.
func freeKeyslot(v *luks2.Volume) (int, error) {
	used := map[int]bool{}
	for _, k := range v.Metadata().Keyslots {
		used[k.ID] = true
	}
	for i := 0; i < 32; i++ {
		if !used[i] {
			return i, nil
		}
	}
	return 0, luks2.ErrNoFreeKeyslot
}

// cmdEnrollKMIP is "enroll kmip": a new keyslot whose secret the KMS wraps (or
// stores), bound by the AAD to this volume and keyslot.
func cmdEnrollKMIP(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "enroll kmip", "--key-file EXISTING --kmip-server HOST:PORT[,...] --kmip-ca F --kmip-cert F --kmip-key F [--kmip-kek UID] [--kmip-mode wrap|get] DEVICE")
	keyFile := f.String("key-file", "", "an existing passphrase, key file or recovery key (- for stdin)")
	var kf kmipFlags
	kf.register(f, true)
	f.StringVar(&kf.tpmDevice, "tpm2-device", "", "TPM holding a --kmip-key tpm2:FILE key")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	servers, err := kms.ParseServers(kf.servers)
	if err != nil {
		return withCode(exitUsage, "", err)
	}
	kf.servers = "" // written into the token, not an override
	p, err := kf.protector(e)
	if err != nil {
		return err
	}
	v, vk, err := openWithKeyFile(ctx, e, *keyFile, pos[0])
	if err != nil {
		return err
	}
	defer v.Close()
	defer vk.Wipe()
	slot, err := freeKeyslot(v)
	if err != nil {
		return err
	}
	enr := &kms.Enrollment{Protector: p, VolumeUUID: v.Metadata().UUID, Keyslot: slot, Servers: servers, KEK: kf.kek, Mode: kf.mode}
	en, err := enr.Enroll(ctx)
	if enr.Created != "" {
		// Said before anything else can fail: the operator must know the object exists.
		fmt.Fprintf(e.stderr, "created KMIP object %s (%s mode) for volume %s\n", enr.Created, enr.Mode, v.Metadata().UUID)
	}
	if err != nil {
		return err
	}
	defer clear(en.Passphrase)
	tok, err := json.Marshal(en.Token)
	if err != nil {
		return fmt.Errorf("encoding token: %w", err)
	}
	got, tid, err := v.AddKeyslotWithToken(ctx, vk, en.Passphrase, slot,
		&luks2.KeyslotOptions{KDF: luks2.MinimumCostKDF()}, tok, luks2.AnyToken)
	kek, _ := en.Token["kek_uid"].(string)
	rec := volumeRecord(audit.KindEnroll, pos[0], v)
	rec.Protector, rec.Keyslots, rec.Token = kms.Name, []int{slot}, audit.TokenID(tid)
	rec.KMSServer, rec.KEKUID = strings.Join(servers, ","), kek
	auditEvent(ctx, e, rec, err)
	if err != nil {
		return err
	}
	e.log.Info("protector enrolled", "device", pos[0], "protector", kms.Name, "keyslot", got, "token", tid, "kek", kek)
	fmt.Fprintf(e.stdout, "kmip protector enrolled in keyslot %d (token %d), %s mode, KEK UID %s\n", got, tid, enr.Mode, kek)
	return nil
}

// cmdKMS is "kms rewrap" (and "kms csr", see kmiptpm.go).
func cmdKMS(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usageErrorf("usage: diskcryptd kms rewrap|csr ...")
	}
	switch args[0] {
	case "rewrap":
		return cmdKMSRewrap(ctx, e, args[1:])
	case "csr":
		return cmdKMSCSR(ctx, e, args[1:])
	}
	return usageErrorf("unknown kms command %q (rewrap, csr)", args[0])
}

// cmdKMSRewrap rotates the KEK of a volume's KMIP tokens: each wrap-mode token is
// decrypted with its KEK and encrypted with the new one, and replaced in one
// metadata commit; keyslots and data are untouched.
func cmdKMSRewrap(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "kms rewrap", "--kmip-kek NEWUID --kmip-ca F --kmip-cert F --kmip-key F [--token-id N] DEVICE")
	var kf kmipFlags
	kf.register(f, false)
	f.StringVar(&kf.kek, "kmip-kek", "", "UID of the new KEK (create and activate it in the KMS first)")
	f.StringVar(&kf.tpmDevice, "tpm2-device", "", "TPM holding a --kmip-key tpm2:FILE key")
	tokenID := f.Int("token-id", -1, "rewrap only this token (default: every diskcryptd-kmip wrap token)")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if kf.kek == "" {
		return usageErrorf("pass the new KEK's UID with --kmip-kek")
	}
	p, err := kf.protector(e)
	if err != nil {
		return err
	}
	v, err := luks2.OpenFile(pos[0], luks2.ReadWrite)
	if err != nil {
		return err
	}
	defer v.Close()
	md := v.Metadata()
	n := 0
	for _, t := range md.Tokens {
		if t.Type != kms.TokenType || (*tokenID >= 0 && t.ID != *tokenID) {
			continue
		}
		raw, err := v.ExportToken(t.ID)
		if err != nil {
			return err
		}
		old, err := kms.ParseToken(raw)
		if err != nil {
			return fmt.Errorf("token %d: %w", t.ID, err)
		}
		if old.Mode != kms.ModeWrap {
			if *tokenID >= 0 {
				return fmt.Errorf("token %d is a %s-mode token; only wrap-mode tokens are rewrapped", t.ID, old.Mode)
			}
			continue
		}
		nt, err := p.Rewrap(ctx, raw, md.UUID, kf.kek)
		if err == nil {
			var js []byte
			if js, err = nt.MarshalJSON(); err == nil {
				err = v.ReplaceToken(t.ID, js)
			}
		}
		rec := volumeRecord(audit.KindRewrap, pos[0], v)
		rec.Protector, rec.Token, rec.TokenType, rec.Keyslots = kms.Name, audit.TokenID(t.ID), t.Type, t.Keyslots
		rec.KEKUID, rec.Detail = kf.kek, "previous KEK "+old.KEKUID
		auditEvent(ctx, e, rec, err)
		if err != nil {
			return fmt.Errorf("token %d: %w", t.ID, err)
		}
		fmt.Fprintf(e.stdout, "token %d rewrapped from KEK %s to KEK %s\n", t.ID, old.KEKUID, kf.kek)
		n++
	}
	if n == 0 {
		return withCode(exitUsage, "", errors.New("no diskcryptd-kmip wrap token to rewrap on this volume"))
	}
	return nil
}

// daemonKMIP builds the daemon's KMIP protector from its configuration (kmip-ca,
// kmip-cert, kmip-key), and the metrics it exports; without them, a protector that
// says what a KMIP token needs.
func daemonKMIP(e *env, cfg *daemon.Config) (unlock.Protector, []io.WriterTo, error) {
	if cfg.KMIPCA == "" {
		return kmipUnconfigured{}, nil, nil
	}
	if fi, err := os.Stat(cfg.KMIPKey); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		// Not refused yet (provisioned hosts may have it so): said at every start.
		e.log.Warn("the KMIP client key is accessible by group or others; chmod 600 it", "kmip-key", cfg.KMIPKey, "mode", fmt.Sprintf("%#o", fi.Mode().Perm()))
	}
	p, err := newKMIPProtector(e, cfg.KMIPCA, cfg.KMIPCert, cfg.KMIPKey, cfg.TPMDevice, "", 0)
	if err != nil {
		return nil, nil, err
	}
	return p, []io.WriterTo{p.Metrics()}, nil
}
