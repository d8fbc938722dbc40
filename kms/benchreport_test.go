package kms_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// refScript is the reference: PyKMIP's own client (ProxyKmipClient, under Debian's
// python3) opening a connection, fetching a 32-byte secret with Get and closing, once
// per simulated volume; it prints the seconds of each round as a JSON list.
const refScript = `import sys, time, json, logging
logging.disable(logging.CRITICAL)
from kmip.pie.client import ProxyKmipClient
from kmip import enums
host, port, cert, key, ca, uid, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
times = []
for i in range(n):
    t = time.perf_counter()
    c = ProxyKmipClient(hostname=host, port=port, cert=cert, key=key, ca=ca, ssl_version="PROTOCOL_TLS", config_file="/dev/null", kmip_version=enums.KMIPVersion.KMIP_1_2)
    c.open()
    obj = c.get(uid)
    assert len(obj.value) == 32, len(obj.value)
    c.close()
    times.append(time.perf_counter() - t)
print(json.dumps(times))
`

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestKMSBenchReport (make bench, KMS_BENCH_REPORT=1) measures the KMS unlock latency
// of one volume (wrap and get mode), of 16 volumes unlocked in parallel against one
// pykmip-server, and PyKMIP's own client doing the get-mode round (connect, Get,
// close) as the reference.
func TestKMSBenchReport(t *testing.T) {
	if os.Getenv("KMS_BENCH_REPORT") == "" {
		t.Skip("KMS_BENCH_REPORT=1 (make bench) prints the KMS unlock figures")
	}
	const rounds = 20
	f := start(t)
	f.p = newProtector(t, f.srv, f.srv.Client, kms.Timing{}, nil)
	var toks [16]unlock.Token
	var passes [16][]byte
	for i := range toks {
		passes[i], toks[i] = f.enroll(t, kms.Enrollment{Keyslot: 1, VolumeUUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i)})
	}
	_, getTok := f.enroll(t, kms.Enrollment{Keyslot: 1, Mode: kms.ModeGet})
	one := func(tok unlock.Token) time.Duration {
		start := time.Now()
		if _, err := f.p.Unseal(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	var wrap, get []time.Duration
	for range rounds {
		wrap = append(wrap, one(toks[0]))
		get = append(get, one(getTok))
	}
	var par []time.Duration
	for range 5 {
		var wg sync.WaitGroup
		start := time.Now()
		for i := range toks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := f.p.Unseal(t.Context(), toks[i])
				if err != nil || !bytes.Equal(got, passes[i]) {
					t.Errorf("volume %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		par = append(par, time.Since(start))
	}
	script := filepath.Join(t.TempDir(), "ref.py")
	os.WriteFile(script, []byte(refScript), 0o600)
	host, port, _ := net.SplitHostPort(f.srv.Addr)
	pt, _ := kms.ParseToken(getTok.JSON)
	out, err := exec.Command(kmiptest.Python, script, host, port, f.srv.Client.CertFile, f.srv.Client.KeyFile, f.srv.CA.CertFile, pt.KEKUID, strconv.Itoa(rounds)).CombinedOutput()
	if err != nil {
		t.Fatalf("PyKMIP reference client: %v\n%s", err, out)
	}
	var secs []float64
	if err := json.Unmarshal(out, &secs); err != nil {
		t.Fatalf("reference output: %v\n%s", err, out)
	}
	var ref []time.Duration
	for _, s := range secs {
		ref = append(ref, time.Duration(s*float64(time.Second)))
	}
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	lines := []string{
		fmt.Sprintf("KMS unlock of one volume, wrap mode (connect, TLS, Decrypt; the KMIP version is negotiated once per server): median %s of %d", r(median(wrap)), rounds),
		fmt.Sprintf("KMS unlock of one volume, get mode (connect, TLS, GetAttributes, Get): median %s; PyKMIP's client (connect, TLS, Get): median %s; ratio ours/PyKMIP %.2f",
			r(median(get)), r(median(ref)), float64(median(get))/float64(median(ref))),
		fmt.Sprintf("16 volumes at once against one pykmip-server, wrap mode, at most 4 connections at a time: median %s for all 16 (%s per volume; one after another would be about %s)",
			r(median(par)), r(median(par)/16), r(16*median(wrap))),
	}
	for _, l := range lines {
		t.Log(l)
		fmt.Println("kms:", l)
	}
}
