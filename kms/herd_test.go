package kms_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/diskcryptd/diskcryptd/kms"
	"github.com/diskcryptd/diskcryptd/kms/kmiptest"
	"github.com/diskcryptd/diskcryptd/unlock"
)

// herdHosts is how many hosts TestThunderingHerd simulates: $KMS_HERD_HOSTS, else 200.
func herdHosts(t *testing.T) int {
	if s := os.Getenv("KMS_HERD_HOSTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("KMS_HERD_HOSTS=%q", s)
		}
		return n
	}
	return 200
}

// TestThunderingHerd is the morning after a power cut: N hosts, each its own TLS
// client (its own key and certificate, one identity at the KMS) with its own volume
// token, unlock against one pykmip-server at the same moment. Every one must succeed
// within the daemon's default token deadline (30 s); the attempts are bounded by the
// retry rounds (no tight loop), and the test reports p50/p99 and the server's count.
func TestThunderingHerd(t *testing.T) {
	n := herdHosts(t)
	srv := kmiptest.Start(t)
	setup := newProtector(t, srv, srv.Client, kms.Timing{Attempt: 10 * time.Second}, nil)
	kek, err := setup.CreateKEK(t.Context(), []string{srv.Addr}, "herd")
	if err != nil {
		t.Fatal(err)
	}
	type host struct {
		p    *kms.Protector
		tok  unlock.Token
		pass []byte
	}
	hosts := make([]*host, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 4)
	for i := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			id := srv.CA.Issue(t, srv.Client.CN, false)
			p := newProtector(t, srv, id, kms.Timing{}, nil) // the daemon's defaults
			b := randBytes(16)
			uuid := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
			e := &kms.Enrollment{Protector: setup, VolumeUUID: uuid, Keyslot: 1, Servers: []string{srv.Addr}, KEK: kek}
			en, err := e.Enroll(t.Context())
			if err != nil {
				errs <- err
				return
			}
			en.Token["keyslots"] = []string{"1"}
			js, _ := json.Marshal(en.Token)
			hosts[i] = &host{p: p, pass: en.Passphrase, tok: unlock.Token{Type: kms.TokenType, Keyslots: []int{1}, JSON: js, VolumeUUID: uuid}}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("enrolment: %v", err)
	}
	before := srv.Requests()
	lat := make([]time.Duration, n)
	failures := make([]error, n)
	gate := make(chan struct{})
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // the daemon's default token timeout
			defer cancel()
			start := time.Now()
			got, err := h.p.Unseal(ctx, h.tok)
			lat[i] = time.Since(start)
			if err == nil && !bytes.Equal(got, h.pass) {
				err = fmt.Errorf("wrong passphrase")
			}
			failures[i] = err
		}()
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	wall := time.Since(start)
	requests := srv.Requests() - before
	var attempts, failed uint64
	classes := map[string]uint64{}
	for i, h := range hosts {
		var ok, other uint64
		for _, r := range []string{"ok", "refused", "timeout", "tls", "kmip_error", "error"} {
			c := h.p.Metrics().Count(srv.Addr, r)
			if r == "ok" {
				ok += c
			} else {
				other += c
				if c > 0 {
					classes[r] += c
				}
			}
		}
		attempts += ok + other
		failed += other
		if failures[i] != nil {
			t.Errorf("host %d did not unlock within 30s: %v", i, failures[i])
		}
		// Bounded: at most Rounds attempts per server (default 4), never a loop.
		if ok+other > 4 {
			t.Errorf("host %d made %d attempts", i, ok+other)
		}
	}
	sorted := append([]time.Duration(nil), lat...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a] < sorted[b] })
	pct := func(p float64) time.Duration { return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))] }
	msg := fmt.Sprintf("%d hosts unlocked at once against one pykmip-server: p50 %s, p99 %s, max %s, wall %s; %d attempts (%d failed %v and were retried after jittered backoff); server counted %d KMIP requests (%.1f per host)",
		n, pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), sorted[n-1].Round(time.Millisecond), wall.Round(time.Millisecond),
		attempts, failed, classes, requests, float64(requests)/float64(n))
	t.Log(msg)
	fmt.Println("kms:", msg)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
