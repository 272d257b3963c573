package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/umhblob/umhblob/proto"
)

// sequenceRequests is the number of requests the sequence step sends.
const sequenceRequests = 1000

// sequenceSizes are the payload sizes of the sequence step, used in turn.
var sequenceSizes = []int{0, 1, 100, 4072, 16 << 10, 64 << 10}

// sequence sends sequenceRequests echo requests in a row on one file and
// checks every reply and that the same helper served them all.
func (g *guest) sequence() (string, error) {
	st, err := g.loadFresh()
	if err != nil {
		return "", err
	}
	dev, err := openDevice()
	if err != nil {
		return "", err
	}
	defer dev.Close()

	latencies := make([]time.Duration, 0, sequenceRequests)
	start := time.Now()
	for i := range sequenceRequests {
		size := sequenceSizes[i%len(sequenceSizes)]
		rtt, err := dev.roundTrip(proto.NewHeader(proto.TypeEcho, g.newID(), size), g.payloads.next(size))
		if err != nil {
			return "", fmt.Errorf("request %d of %d (%s): %w", i+1, sequenceRequests, formatSize(size), err)
		}
		latencies = append(latencies, rtt)
	}
	total := time.Since(start)
	slices.Sort(latencies)
	detail := fmt.Sprintf("%d echo requests of %s to %s in %v from helper %d: average %v, median %v, 99th percentile %v, max %v",
		sequenceRequests, formatSize(slices.Min(sequenceSizes)), formatSize(slices.Max(sequenceSizes)), total.Round(time.Millisecond), st.PID,
		(total / sequenceRequests).Round(time.Microsecond), latencies[len(latencies)/2].Round(time.Microsecond),
		latencies[len(latencies)*99/100].Round(time.Microsecond), latencies[len(latencies)-1].Round(time.Microsecond))

	now, err := readStatus()
	if err != nil {
		return detail, err
	}
	requests, errs := now.Requests-st.Requests, now.Errors-st.Errors
	detail += fmt.Sprintf("; helper_pid %d, helper_starts %d, requests +%d, errors +%d", now.PID, now.Starts, requests, errs)
	// A signal such as the Go runtime's preemption signal SIGURG can
	// interrupt a write(2) blocked in the module. Its handler has
	// SA_RESTART, so the module counts an error and the restarted
	// request once more, and the caller sees only the reply.
	switch {
	case now.PID != st.PID || now.Starts != st.Starts:
		return detail, fmt.Errorf("helper_pid %d and helper_starts %d after the requests, want %d and %d", now.PID, now.Starts, st.PID, st.Starts)
	case requests-errs != sequenceRequests:
		return detail, fmt.Errorf("the module counted %d requests and %d errors, want %d more requests than errors", requests, errs, sequenceRequests)
	}
	if _, err := checkHelper(st.PID); err != nil {
		return detail, err
	}
	dev.Close()
	if _, err := g.unloadChecked(); err != nil {
		return detail, err
	}
	return detail, nil
}

// rmmodBusy calls delete_module while callers send requests: it must fail
// at once and leave the callers unaffected, and succeed right after they
// have closed their files.
func (g *guest) rmmodBusy() (string, error) {
	if _, err := g.loadFresh(); err != nil {
		return "", err
	}
	timeout, err := requestTimeout()
	if err != nil {
		return "", err
	}
	l, err := startLoad(mixedSizes, 0)
	if err != nil {
		return "", err
	}
	var problems []string
	if _, err := l.waitServed(time.Time{}, servedReplies, g.scale(serveTimeout)); err != nil {
		problems = append(problems, err.Error())
	}
	errno, busy, err := unloadBusy(g.scale(busyUnloadLimit))
	if err != nil {
		problems = append(problems, err.Error())
	}
	if _, err := l.waitServed(time.Now(), servedReplies, g.scale(serveTimeout)); err != nil {
		problems = append(problems, "after rmmod failed: "+err.Error())
	}
	limit := timeout + g.scale(latencyMargin)
	if err := blockedError(l.finish(limit)); err != nil {
		return "", err
	}
	stats := summarize(l.snapshot(), nil, limit)
	problems = append(problems, stats.Problems...)

	elapsed, err := g.unloadChecked()
	detail := fmt.Sprintf("rmmod with %d callers failed with %s in %v; callers: %v; rmmod after they closed their files took %v",
		loadCallers, errno, busy.Round(time.Microsecond), stats, elapsed.Round(time.Microsecond))
	if err != nil {
		problems = append(problems, "rmmod after the callers closed their files: "+err.Error())
	}
	if len(problems) > 0 {
		return detail, errors.New(strings.Join(problems, "; "))
	}
	return detail, nil
}
