package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/proto"
)

// loadCallers is the number of callers in a load, each with its own open
// file of the device.
const loadCallers = 4

// pipeBuf is PIPE_BUF on Linux: a write of at most this many bytes to a
// pipe is never split or interleaved with other writes.
const pipeBuf = 4096

// Payload sizes of the echo requests in a load. With pipeSizes every
// frame is at most pipeBuf bytes, so bytes that another writer puts into
// the helper's pipes land between frames, never inside one.
var (
	mixedSizes = []int{0, 1, 100, 4072, 16 << 10, 64 << 10, 256 << 10}
	pipeSizes  = []int{0, 1, 100, 1000, pipeBuf - proto.HeaderSize}
)

// outcome classifies one request of a load.
type outcome int

const (
	outcomeOK    outcome = iota // the correct reply
	outcomeErrno                // write(2) failed with an errno
	outcomeLost                 // write(2) succeeded but read(2) returned no reply
	outcomeWrong                // the reply is not the one for this request
)

// request is the record of one request of a load.
type request struct {
	caller  int
	start   time.Time
	end     time.Time
	outcome outcome
	errno   unix.Errno // for outcomeErrno
	err     error      // for every outcome but outcomeOK
	size    int
}

// load sends echo requests from loadCallers callers at once until it is
// stopped, and records every request.
type load struct {
	sizes []int
	stop  atomic.Bool

	mu       sync.Mutex
	requests []request
	inFlight map[int]time.Time // caller -> start of its unfinished request
	done     []chan struct{}

	finishOnce sync.Once
	blocked    []string // set by finish
}

// startLoad opens the device once per caller and starts the callers. Each
// request has a fresh pseudo-random payload from a generator seeded with
// seed and the caller's index, so a reply meant for another request fails
// the payload check unless both payloads are empty or one byte long.
func startLoad(sizes []int, seed uint64) (*load, error) {
	l := &load{sizes: sizes, inFlight: make(map[int]time.Time)}
	devs := make([]*device, 0, loadCallers)
	for range loadCallers {
		dev, err := openDevice()
		if err != nil {
			for _, d := range devs {
				d.Close()
			}
			return nil, err
		}
		devs = append(devs, dev)
	}
	for i, dev := range devs {
		done := make(chan struct{})
		l.done = append(l.done, done)
		go func() {
			defer close(done)
			defer dev.Close()
			l.runCaller(i, dev, seed)
		}()
	}
	return l, nil
}

func (l *load) runCaller(caller int, dev *device, seed uint64) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	binary.LittleEndian.PutUint64(key[8:], uint64(caller))
	stream := rand.NewChaCha8(key)
	rng := rand.New(stream)
	var seq uint64
	for !l.stop.Load() {
		seq++
		size := l.sizes[rng.IntN(len(l.sizes))]
		payload := make([]byte, size)
		stream.Read(payload)
		h := proto.NewHeader(proto.TypeEcho, 0x5a5a_0000_0000_0000|uint64(caller)<<32|seq, size)

		r := request{caller: caller, start: time.Now(), size: size}
		l.setInFlight(caller, r.start)
		r.outcome, r.errno, r.err = callOnce(dev, h, payload)
		r.end = time.Now()
		l.record(r)
	}
}

// callOnce sends one request and classifies what happened to it.
func callOnce(dev *device, h proto.Header, payload []byte) (outcome, unix.Errno, error) {
	if err := dev.write(proto.AppendFrame(nil, h, payload)); err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return outcomeErrno, errno, err
		}
		return outcomeWrong, 0, err
	}
	rh, reply, err := dev.readFrame()
	if err != nil {
		return outcomeLost, 0, fmt.Errorf("write succeeded but read failed: %w", err)
	}
	if err := checkReply(h, payload, rh, reply); err != nil {
		return outcomeWrong, 0, err
	}
	return outcomeOK, 0, nil
}

func (l *load) setInFlight(caller int, start time.Time) {
	l.mu.Lock()
	l.inFlight[caller] = start
	l.mu.Unlock()
}

func (l *load) record(r request) {
	l.mu.Lock()
	l.requests = append(l.requests, r)
	delete(l.inFlight, r.caller)
	l.mu.Unlock()
}

// snapshot returns a copy of the requests recorded so far.
func (l *load) snapshot() []request {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.requests)
}

// waitServed waits up to timeout until every caller has had n correct
// replies to requests it started after since. It returns the end of the
// earliest such reply.
func (l *load) waitServed(since time.Time, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		counts := make([]int, loadCallers)
		var first time.Time
		for _, r := range l.snapshot() {
			if r.outcome != outcomeOK || r.start.Before(since) {
				continue
			}
			counts[r.caller]++
			if first.IsZero() || r.end.Before(first) {
				first = r.end
			}
		}
		if slices.Min(counts) >= n {
			return first, nil
		}
		if time.Now().After(deadline) {
			return first, fmt.Errorf("callers had %v correct replies within %v, want %d each", counts, timeout, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finish stops the callers and waits up to timeout for each to return
// from its last request. It returns the callers still blocked then, with
// how long each has been blocked; their files stay open. Later calls
// return the same list at once.
func (l *load) finish(timeout time.Duration) []string {
	l.finishOnce.Do(func() {
		l.stop.Store(true)
		deadline := time.After(timeout)
		for _, done := range l.done {
			select {
			case <-done:
			case <-deadline:
			}
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, caller := range slices.Sorted(maps.Keys(l.inFlight)) {
			l.blocked = append(l.blocked, fmt.Sprintf("caller %d blocked for %v", caller, time.Since(l.inFlight[caller]).Round(time.Millisecond)))
		}
	})
	return l.blocked
}

// loadStats summarizes the requests of a load.
type loadStats struct {
	Sent       int
	OK         int
	Errnos     map[unix.Errno]int
	Lost       int
	Wrong      int
	MaxLatency time.Duration
	Problems   []string // the first few lost, wrong, slow or unexpected requests
}

// maxProblems is how many problem requests a summary describes.
const maxProblems = 3

// summarize counts the requests by outcome. A request fails the load when
// it got a wrong reply, no reply after a successful write, an errno not
// in allowed, or took longer than limit.
func summarize(requests []request, allowed []unix.Errno, limit time.Duration) loadStats {
	s := loadStats{Errnos: make(map[unix.Errno]int)}
	problem := func(format string, args ...any) {
		if len(s.Problems) < maxProblems {
			s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
		}
	}
	for _, r := range requests {
		s.Sent++
		latency := r.end.Sub(r.start)
		s.MaxLatency = max(s.MaxLatency, latency)
		if latency > limit {
			problem("caller %d: %s request took %v, over the %v limit", r.caller, formatSize(r.size), latency.Round(time.Millisecond), limit)
		}
		switch r.outcome {
		case outcomeOK:
			s.OK++
		case outcomeErrno:
			s.Errnos[r.errno]++
			if !slices.Contains(allowed, r.errno) {
				problem("caller %d: %s request failed with %s, want a reply or one of %s", r.caller, formatSize(r.size), errnoString(r.errno), errnoList(allowed))
			}
		case outcomeLost:
			s.Lost++
			problem("caller %d: %s request lost: %v", r.caller, formatSize(r.size), r.err)
		case outcomeWrong:
			s.Wrong++
			problem("caller %d: %s request got a wrong reply: %v", r.caller, formatSize(r.size), r.err)
		}
	}
	return s
}

// Failed returns the number of requests that failed with an errno.
func (s loadStats) Failed() int {
	n := 0
	for _, count := range s.Errnos {
		n += count
	}
	return n
}

// String formats the counts, such as "812 sent, 805 ok, 7 ECONNRESET,
// 0 lost, 0 wrong, max latency 160ms".
func (s loadStats) String() string {
	parts := []string{fmt.Sprintf("%d sent", s.Sent), fmt.Sprintf("%d ok", s.OK)}
	for _, errno := range slices.Sorted(maps.Keys(s.Errnos)) {
		parts = append(parts, fmt.Sprintf("%d %s", s.Errnos[errno], errnoString(errno)))
	}
	parts = append(parts, fmt.Sprintf("%d lost", s.Lost), fmt.Sprintf("%d wrong", s.Wrong),
		fmt.Sprintf("max latency %v", s.MaxLatency.Round(time.Millisecond)))
	return strings.Join(parts, ", ")
}

// add adds the counts of o to s.
func (s *loadStats) add(o loadStats) {
	if s.Errnos == nil {
		s.Errnos = make(map[unix.Errno]int)
	}
	s.Sent += o.Sent
	s.OK += o.OK
	for errno, n := range o.Errnos {
		s.Errnos[errno] += n
	}
	s.Lost += o.Lost
	s.Wrong += o.Wrong
	s.MaxLatency = max(s.MaxLatency, o.MaxLatency)
}

func errnoList(errnos []unix.Errno) string {
	if len(errnos) == 0 {
		return "none"
	}
	names := make([]string, len(errnos))
	for i, e := range errnos {
		names[i] = errnoString(e)
	}
	return strings.Join(names, ", ")
}
