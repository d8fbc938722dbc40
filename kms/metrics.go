package kms

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// Metrics counts KMIP requests per server and result, and their latency. It is safe
// for concurrent use.
type Metrics struct {
	mu     sync.Mutex
	counts map[[2]string]uint64
	sum    map[string]time.Duration
	n      map[string]uint64
}

// NewMetrics returns empty Metrics.
func NewMetrics() *Metrics {
	return &Metrics{counts: map[[2]string]uint64{}, sum: map[string]time.Duration{}, n: map[string]uint64{}}
}

func (m *Metrics) observe(server, result string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counts[[2]string{server, result}]++
	m.sum[server] += d
	m.n[server]++
}

// Count returns the number of attempts against server with result ("ok", "refused",
// "timeout", "tls", "kmip_error", "error").
func (m *Metrics) Count(server, result string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[[2]string{server, result}]
}

// WriteTo writes the metrics in the Prometheus text format:
// diskcryptd_kms_requests_total{server,result} and
// diskcryptd_kms_request_duration_seconds{server} (a summary: _sum and _count).
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	keys := make([][2]string, 0, len(m.counts))
	for k := range m.counts {
		keys = append(keys, k)
	}
	servers := make([]string, 0, len(m.n))
	for s := range m.n {
		servers = append(servers, s)
	}
	counts := map[[2]string]uint64{}
	for k, v := range m.counts {
		counts[k] = v
	}
	sum, n := map[string]time.Duration{}, map[string]uint64{}
	for k, v := range m.sum {
		sum[k] = v
	}
	for k, v := range m.n {
		n[k] = v
	}
	m.mu.Unlock()
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	sort.Strings(servers)
	var total int64
	pr := func(format string, a ...any) error {
		k, err := fmt.Fprintf(w, format, a...)
		total += int64(k)
		return err
	}
	if err := pr("# HELP diskcryptd_kms_requests_total KMIP attempts (connect, handshake, request) per server and result.\n# TYPE diskcryptd_kms_requests_total counter\n"); err != nil {
		return total, err
	}
	for _, k := range keys {
		if err := pr("diskcryptd_kms_requests_total{server=%q,result=%q} %d\n", k[0], k[1], counts[k]); err != nil {
			return total, err
		}
	}
	if err := pr("# HELP diskcryptd_kms_request_duration_seconds Time of KMIP attempts per server.\n# TYPE diskcryptd_kms_request_duration_seconds summary\n"); err != nil {
		return total, err
	}
	for _, s := range servers {
		if err := pr("diskcryptd_kms_request_duration_seconds_sum{server=%q} %g\ndiskcryptd_kms_request_duration_seconds_count{server=%q} %d\n",
			s, sum[s].Seconds(), s, n[s]); err != nil {
			return total, err
		}
	}
	return total, nil
}
