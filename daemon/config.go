package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/diskcryptd/diskcryptd/blockdev"
)

// Config is the daemon's configuration file, a line-oriented format in the spirit of
// /etc/crypttab:
//
//	# global settings: KEY VALUE
//	tpm2-device    /dev/tpmrm0
//	tpm2-signature /run/systemd/tpm2-pcr-signature.json
//	token-timeout  30s
//	device-timeout 90s
//	socket         /run/diskcryptd/diskcryptd.sock
//	audit-log      /var/log/diskcryptd/audit.jsonl
//	kmip-ca        /etc/diskcryptd/kmip-ca.pem
//	kmip-cert      /etc/diskcryptd/kmip-client.pem
//	kmip-key       /etc/diskcryptd/kmip-client.key
//	tang-timeout   5s      # each request to a Tang server (clevis tokens)
//	tang-attempts  3       # tries of each Tang request, backoff doubling from 250ms
//	tang-ca-file   /etc/diskcryptd/tang-ca.pem   # CAs for https:// Tang servers
//	# volumes: volume NAME DEVICE [OPTIONS]
//	volume data0 UUID=0e3f6c1e-5a7b-4c43-9d2e-6f1f2a3b4c5d discard,tpm2-measure-pcr=15
//	volume data1 PARTLABEL=data1 readonly
//	volume data2 /dev/vdb
//
// DEVICE is a path, UUID=<LUKS UUID> or PARTLABEL=<label>. OPTIONS is a comma
// separated list: discard, readonly, no-read-workqueue, no-write-workqueue,
// same-cpu-crypt, submit-from-crypt-cpus, tpm2-measure-pcr=N|yes|no,
// token-timeout=DURATION, key-file=/PATH (a fallback when no token opens the volume),
// reseal=tpm2 (after such a fallback, reseal a TPM2 token whose PCRs changed).
//
// Every volume is measured into PCR 15 (DefaultMeasurePCR) after it is unlocked, when a
// TPM is present, as systemd-cryptsetup's tpm2-measure-pcr=yes does: a supplanted
// volume (another header, another volume key) then changes PCR 15, so secrets sealed
// to it afterwards are not released. tpm2-measure-pcr=no opts a volume out.
type Config struct {
	// TPMDevice is the TPM (/dev/tpmrm0 when empty, or swtpm:path=SOCKET).
	TPMDevice string
	// TPMSignature is the PCR signature JSON for tokens with a signed PCR policy
	// ("tpm2-signature PATH"); empty means /run/systemd/tpm2-pcr-signature.json when
	// present.
	TPMSignature string
	// TokenTimeout bounds each token attempt.
	TokenTimeout time.Duration
	// DeviceTimeout bounds the wait for a volume's device to appear.
	DeviceTimeout time.Duration
	// Socket is the local status socket; empty disables it.
	Socket string
	// AuditLog is the audit log file ("" for the default, "none" for no file);
	// $DISKCRYPTD_AUDIT_LOG overrides it.
	AuditLog string
	// KMIPCA, KMIPCert and KMIPKey ("kmip-ca", "kmip-cert", "kmip-key" PATH) are the
	// mutual-TLS identity for KMIP tokens: the CA of the KMS servers, this host's
	// client certificate and its key (PEM files; the key may be "tpm2:/PATH", a
	// TPM-held key blob from "diskcryptd kms csr"). All three or none.
	KMIPCA, KMIPCert, KMIPKey string
	// TangTimeout bounds each request to a Tang server (0: 5 s).
	TangTimeout time.Duration
	// TangAttempts is the number of tries of each Tang request (0: 3).
	TangAttempts int
	// TangCAFile holds the CA certificates for https:// Tang servers ("": the
	// system's).
	TangCAFile string
	// Volumes are unlocked in parallel.
	Volumes []VolumeConfig
}

// VolumeConfig is one "volume" line.
type VolumeConfig struct {
	// Name is the mapping name (/dev/mapper/NAME).
	Name string
	// Device is the device spec: a path, UUID=... or PARTLABEL=...
	Device string
	// ReadOnly maps the volume read-only.
	ReadOnly bool
	// Flags are dm-crypt options added to the volume's persistent flags.
	Flags blockdev.CryptFlags
	// MeasurePCR, when >= 0, is the PCR the volume is measured into after unlock
	// (DefaultMeasurePCR unless the volume says otherwise; -1 for none).
	MeasurePCR int
	// TokenTimeout overrides Config.TokenTimeout when > 0.
	TokenTimeout time.Duration
	// KeyFile, when set, is a passphrase file (0600) tried when no token opens the
	// volume: an authorized fallback, e.g. on a provisioning network.
	KeyFile string
	// ResealTPM2 reseals a TPM2 token whose PCRs changed, after the volume opened
	// through another route ("reseal=tpm2").
	ResealTPM2 bool
}

// Default configuration values.
const (
	DefaultTokenTimeout  = 30 * time.Second
	DefaultDeviceTimeout = 90 * time.Second
	DefaultSocket        = "/run/diskcryptd/diskcryptd.sock"
	// DefaultMeasurePCR is the PCR volumes are measured into, as systemd's
	// tpm2-measure-pcr=yes.
	DefaultMeasurePCR = 15
)

// ErrConfig wraps every configuration error; the message names the line.
var ErrConfig = errors.New("daemon: configuration error")

// maxConfigLine bounds one configuration line.
const maxConfigLine = 4096

// ParseConfig reads a configuration file.
func ParseConfig(r io.Reader) (*Config, error) {
	c := &Config{TokenTimeout: DefaultTokenTimeout, DeviceTimeout: DefaultDeviceTimeout, Socket: DefaultSocket}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxConfigLine)
	names := map[string]bool{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%w: line %d: %s", ErrConfig, n, fmt.Sprintf(format, a...))
		}
		switch f[0] {
		case "volume":
			if len(f) < 3 || len(f) > 4 {
				return nil, bad("want: volume NAME DEVICE [OPTIONS]")
			}
			v := VolumeConfig{Name: f[1], Device: f[2], MeasurePCR: DefaultMeasurePCR}
			if names[v.Name] {
				return nil, bad("volume %q declared twice", v.Name)
			}
			names[v.Name] = true
			if strings.ContainsAny(v.Name, "/ ") || v.Name == "." || v.Name == ".." {
				return nil, bad("invalid volume name %q", v.Name)
			}
			if len(f) == 4 {
				if err := parseVolumeOptions(&v, f[3]); err != nil {
					return nil, bad("%v", err)
				}
			}
			c.Volumes = append(c.Volumes, v)
		case "tpm2-device", "socket":
			if len(f) != 2 {
				return nil, bad("want: %s VALUE", f[0])
			}
			if f[0] == "socket" {
				c.Socket = f[1]
				if f[1] == "none" {
					c.Socket = ""
				}
			} else {
				c.TPMDevice = f[1]
			}
		case "tpm2-signature":
			if len(f) != 2 || !strings.HasPrefix(f[1], "/") {
				return nil, bad("want: tpm2-signature /PATH (systemd-measure's PCR signature JSON)")
			}
			c.TPMSignature = f[1]
		case "kmip-ca", "kmip-cert", "kmip-key":
			if len(f) != 2 || !(strings.HasPrefix(f[1], "/") || (f[0] == "kmip-key" && strings.HasPrefix(f[1], "tpm2:/"))) {
				return nil, bad("want: %s /PATH (a PEM file; for kmip-key also tpm2:/PATH, a TPM-held key)", f[0])
			}
			switch f[0] {
			case "kmip-ca":
				c.KMIPCA = f[1]
			case "kmip-cert":
				c.KMIPCert = f[1]
			default:
				c.KMIPKey = f[1]
			}
		case "audit-log":
			if len(f) != 2 {
				return nil, bad("want: audit-log PATH (or none)")
			}
			c.AuditLog = f[1]
		case "token-timeout", "device-timeout":
			if len(f) != 2 {
				return nil, bad("want: %s DURATION", f[0])
			}
			d, err := time.ParseDuration(f[1])
			if err != nil || d <= 0 {
				return nil, bad("%s: %q is not a positive duration like 30s", f[0], f[1])
			}
			if f[0] == "token-timeout" {
				c.TokenTimeout = d
			} else {
				c.DeviceTimeout = d
			}
		case "tang-timeout", "tang-attempts", "tang-ca-file":
			if len(f) != 2 {
				return nil, bad("want: %s VALUE", f[0])
			}
			switch f[0] {
			case "tang-ca-file":
				c.TangCAFile = f[1]
			case "tang-attempts":
				n, err := strconv.Atoi(f[1])
				if err != nil || n < 1 || n > 10 {
					return nil, bad("tang-attempts: %q is not a number from 1 to 10", f[1])
				}
				c.TangAttempts = n
			default:
				d, err := time.ParseDuration(f[1])
				if err != nil || d <= 0 {
					return nil, bad("tang-timeout: %q is not a positive duration like 5s", f[1])
				}
				c.TangTimeout = d
			}
		default:
			return nil, bad("unknown setting %q", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if n := countSet(c.KMIPCA, c.KMIPCert, c.KMIPKey); n != 0 && n != 3 {
		return nil, fmt.Errorf("%w: kmip-ca, kmip-cert and kmip-key go together (mutual TLS)", ErrConfig)
	}
	return c, nil
}

func parseVolumeOptions(v *VolumeConfig, opts string) error {
	for _, o := range strings.Split(opts, ",") {
		key, val, hasVal := strings.Cut(o, "=")
		switch key {
		case "discard":
			v.Flags |= blockdev.AllowDiscards
		case "readonly", "read-only":
			v.ReadOnly = true
		case "no-read-workqueue", "no-write-workqueue", "same-cpu-crypt", "submit-from-crypt-cpus":
			fl, err := blockdev.ParseCryptFlag(key)
			if err != nil {
				return err
			}
			v.Flags |= fl
		case "tpm2-measure-pcr":
			switch val {
			case "no", "off", "false":
				v.MeasurePCR = -1
			case "yes", "on", "true":
				v.MeasurePCR = DefaultMeasurePCR
			default:
				n, err := strconv.Atoi(val)
				if !hasVal || err != nil || n < 0 || n > 23 {
					return fmt.Errorf("tpm2-measure-pcr=%q: want a PCR number 0..23, yes or no", val)
				}
				v.MeasurePCR = n
			}
		case "key-file":
			if !hasVal || !strings.HasPrefix(val, "/") {
				return fmt.Errorf("key-file=%q: want an absolute path", val)
			}
			v.KeyFile = val
		case "reseal":
			if val != "tpm2" {
				return fmt.Errorf("reseal=%q: want reseal=tpm2", val)
			}
			v.ResealTPM2 = true
		case "token-timeout":
			d, err := time.ParseDuration(val)
			if err != nil || d <= 0 {
				return fmt.Errorf("token-timeout=%q: want a duration like 30s", val)
			}
			v.TokenTimeout = d
		default:
			return fmt.Errorf("unknown volume option %q", o)
		}
	}
	return nil
}

func countSet(s ...string) int {
	n := 0
	for _, v := range s {
		if v != "" {
			n++
		}
	}
	return n
}
