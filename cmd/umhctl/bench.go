package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umhblob/umhblob/usermode"
)

// benchResult collects the round trip times of one bench run.
type benchResult struct {
	mu       sync.Mutex
	rtts     []time.Duration // of the requests that succeeded
	failed   int
	firstErr error
}

func (b *benchResult) add(rtt time.Duration, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	if err != nil {
		b.failed++
		if b.firstErr == nil {
			b.firstErr = err
		}
		return
	}
	b.rtts = append(b.rtts, rtt)
}

func benchCommand(ctx context.Context, c usermode.Client, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	n := fs.Int("n", 1000, "number of echo requests")
	size := fs.Int("size", 4096, "payload size of each request in bytes")
	concurrency := fs.Int("c", 1, "number of requests in flight at once")
	if err := fs.Parse(args); err != nil {
		return usageErrorf("bench: %v", err)
	}
	switch {
	case fs.NArg() != 0:
		return usageErrorf("bench: unexpected argument %q", fs.Arg(0))
	case *n < 1:
		return usageErrorf("bench: -n %d, want at least 1", *n)
	case *concurrency < 1:
		return usageErrorf("bench: -c %d, want at least 1", *concurrency)
	}
	if err := checkSize(*size); err != nil {
		return err
	}

	fmt.Fprintf(stdout, "bench: %d echo requests of %d bytes, %d at a time\n", *n, *size, *concurrency)
	var result benchResult
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range *concurrency {
		wg.Go(func() {
			payload := randomPayload(*size)
			for next.Add(1) <= int64(*n) {
				result.add(benchEcho(ctx, c, payload))
			}
		})
	}
	wg.Wait()
	printBench(stdout, &result, time.Since(start), *size)

	if result.failed > 0 {
		return fmt.Errorf("%d of %d requests failed, the first with: %w", result.failed, *n, result.firstErr)
	}
	return nil
}

// benchEcho sends one echo request and checks the reply's payload.
func benchEcho(ctx context.Context, c usermode.Client, payload []byte) (time.Duration, error) {
	start := time.Now()
	r, err := c.Echo(ctx, payload)
	rtt := time.Since(start)
	if err != nil {
		return rtt, err
	}
	if i := firstDiff(r.Payload, payload); i >= 0 {
		return rtt, fmt.Errorf("echo reply %d differs from the request at byte %d", r.Header.ID, i)
	}
	return rtt, nil
}

func printBench(w io.Writer, b *benchResult, elapsed time.Duration, size int) {
	ok := len(b.rtts)
	rate := float64(ok) / elapsed.Seconds()
	fmt.Fprintf(w, "ok %d, failed %d, elapsed %v, %.0f requests/s, %.1f MiB/s each way\n",
		ok, b.failed, elapsed.Round(time.Millisecond), rate, rate*float64(size)/(1<<20))
	if ok == 0 {
		return
	}

	slices.Sort(b.rtts)
	percentile := func(p int) time.Duration {
		return b.rtts[(ok-1)*p/100].Round(time.Microsecond)
	}
	fmt.Fprintf(w, "rtt min %v, p50 %v, p90 %v, p99 %v, max %v\n",
		percentile(0), percentile(50), percentile(90), percentile(99), percentile(100))
}
