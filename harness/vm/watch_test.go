package vm

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umhblob/umhblob/harness/report"
)

// testTiming has limits short enough for unit tests and far enough apart
// that the tests can tell which watchdog fired.
var testTiming = timing{
	Total:       2 * time.Second,
	Silence:     300 * time.Millisecond,
	Grace:       100 * time.Millisecond,
	AfterResult: 200 * time.Millisecond,
	KillWait:    200 * time.Millisecond,
}

// fakeQEMU replaces QEMU and vmtest in the tests. Its kill closes the line
// channel unless stuck is set, as vmtest does once a killed QEMU exits.
type fakeQEMU struct {
	lines  chan string
	stuck  bool
	mu     sync.Mutex
	kills  int
	killAt time.Time
	once   sync.Once
}

func newFakeQEMU() *fakeQEMU {
	return &fakeQEMU{lines: make(chan string, 100)}
}

func (q *fakeQEMU) kill() {
	q.mu.Lock()
	q.kills++
	q.killAt = time.Now()
	q.mu.Unlock()
	if !q.stuck {
		q.exit()
	}
}

func (q *fakeQEMU) exit() {
	q.once.Do(func() { close(q.lines) })
}

func (q *fakeQEMU) killed() (int, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.kills, q.killAt
}

// watchT runs watch on q until it returns and returns the stop reason
// and the monitor.
func watchT(t testing.TB, ctx context.Context, q *fakeQEMU) (string, *monitor) {
	t.Helper()
	m := &monitor{}
	done := make(chan string, 1)
	go func() { done <- watch(ctx, q.lines, m, func(string) {}, q.kill, testTiming) }()
	select {
	case reason := <-done:
		return reason, m
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not return within 10s")
		return "", nil
	}
}

func TestWatchExitAfterResult(t *testing.T) {
	q := newFakeQEMU()
	for _, line := range passingLines() {
		q.lines <- line
	}
	q.exit()

	reason, m := watchT(t, context.Background(), q)

	if reason != "" {
		t.Errorf("stop reason = %q, want none", reason)
	}
	if kills, _ := q.killed(); kills != 0 {
		t.Errorf("kill called %d times, want 0", kills)
	}
	if passed, verdictReason := m.verdict(reason, nil); !passed {
		t.Errorf("verdict = fail (%s), want pass", verdictReason)
	}
}

func TestWatchSilence(t *testing.T) {
	q := newFakeQEMU()
	q.lines <- "[    0.500000] Run /init as init process"
	start := time.Now()

	reason, m := watchT(t, context.Background(), q)

	if !strings.Contains(reason, "no serial output for 300ms") || !strings.Contains(reason, "Run /init") {
		t.Errorf("stop reason = %q, want the silence limit and the last line", reason)
	}
	_, killAt := q.killed()
	if d := killAt.Sub(start); d < testTiming.Silence || d > testTiming.Silence+time.Second {
		t.Errorf("killed %v after the last line, want about %v", d, testTiming.Silence)
	}
	if passed, _ := m.verdict(reason, nil); passed {
		t.Error("verdict = pass after a hang")
	}
}

func TestWatchFatalLineKillsAfterGrace(t *testing.T) {
	q := newFakeQEMU()
	start := time.Now()
	q.lines <- "[    2.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000"
	q.lines <- "[    2.000001] Call Trace:"

	reason, m := watchT(t, context.Background(), q)

	kills, killAt := q.killed()
	if kills != 1 {
		t.Fatalf("kill called %d times, want 1", kills)
	}
	if d := killAt.Sub(start); d < testTiming.Grace || d >= testTiming.Silence {
		t.Errorf("killed %v after the fatal line, want after the %v grace period and before the silence limit", d, testTiming.Grace)
	}
	if reason != "" {
		t.Errorf("stop reason = %q, want none: the monitor holds the fatal line", reason)
	}
	if _, verdictReason := m.verdict(reason, nil); !strings.HasPrefix(verdictReason, fatalBug+": ") {
		t.Errorf("verdict reason = %q, want it to start with %q", verdictReason, fatalBug)
	}
}

func TestWatchNoRestartAfterResult(t *testing.T) {
	q := newFakeQEMU()
	for _, line := range passingLines() {
		q.lines <- line
	}

	reason, m := watchT(t, context.Background(), q)

	if !strings.Contains(reason, "did not restart within 200ms") {
		t.Errorf("stop reason = %q, want the restart limit", reason)
	}
	if passed, _ := m.verdict(reason, nil); passed {
		t.Error("verdict = pass although the guest did not restart")
	}
}

func TestWatchTotalTimeout(t *testing.T) {
	q := newFakeQEMU()
	stopFeeding := make(chan struct{})
	defer close(stopFeeding)
	go func() {
		for {
			select {
			case <-stopFeeding:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if kills, _ := q.killed(); kills > 0 {
				return
			}
			q.lines <- report.Info("still running")
		}
	}()

	reason, _ := watchT(t, context.Background(), q)

	if !strings.Contains(reason, "timed out after 2s") {
		t.Errorf("stop reason = %q, want the total limit", reason)
	}
}

func TestWatchCanceled(t *testing.T) {
	q := newFakeQEMU()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	reason, _ := watchT(t, ctx, q)

	if !strings.Contains(reason, "canceled") {
		t.Errorf("stop reason = %q, want cancellation", reason)
	}
}

func TestWatchQEMUIgnoresKill(t *testing.T) {
	q := newFakeQEMU()
	q.stuck = true
	q.lines <- "[    2.000000] Kernel panic - not syncing: Fatal exception"

	reason, _ := watchT(t, context.Background(), q)

	if !strings.Contains(reason, "QEMU did not exit within 200ms") {
		t.Errorf("stop reason = %q, want the kill wait limit", reason)
	}
}

func TestLineWriter(t *testing.T) {
	lines := make(chan string, 10)
	var log strings.Builder
	w := newLineWriter(&log, lines)
	w.Write([]byte("\x1bcSeaBIOS\r\nBoot"))
	w.Write([]byte("ing\r\n[    0.0] Linux"))
	w.Close()
	w.Close()

	var got []string
	for line := range lines {
		got = append(got, line)
	}
	want := []string{"SeaBIOS", "Booting", "[    0.0] Linux"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q", got, want)
	}
	if wantLog := "\x1bcSeaBIOS\r\nBooting\r\n[    0.0] Linux"; log.String() != wantLog {
		t.Errorf("log = %q, want the raw output %q", log.String(), wantLog)
	}
}
