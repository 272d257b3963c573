package main

import (
	"errors"
	"os"
	"os/signal"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/harness/report"
)

func TestSummarize(t *testing.T) {
	start := time.Unix(1000, 0)
	req := func(o outcome, errno unix.Errno, latency time.Duration) request {
		return request{caller: 1, start: start, end: start.Add(latency), outcome: o, errno: errno, err: errors.New("x"), size: 4096}
	}
	allowed := []unix.Errno{unix.ECONNRESET, unix.ETIMEDOUT}
	tests := []struct {
		name     string
		requests []request
		want     string // the String of the stats
		problem  string // a substring of the first problem, or "" for none
	}{
		{
			name:     "all ok",
			requests: []request{req(outcomeOK, 0, time.Millisecond), req(outcomeOK, 0, 3*time.Millisecond)},
			want:     "2 sent, 2 ok, 0 lost, 0 wrong, max latency 3ms",
		},
		{
			name:     "allowed errnos",
			requests: []request{req(outcomeOK, 0, time.Millisecond), req(outcomeErrno, unix.ECONNRESET, 0), req(outcomeErrno, unix.ETIMEDOUT, time.Second)},
			want:     "3 sent, 1 ok, 1 ECONNRESET, 1 ETIMEDOUT, 0 lost, 0 wrong, max latency 1s",
		},
		{
			name:     "unexpected errno",
			requests: []request{req(outcomeErrno, unix.EIO, 0)},
			want:     "1 sent, 0 ok, 1 EIO, 0 lost, 0 wrong, max latency 0s",
			problem:  "failed with EIO, want a reply or one of ECONNRESET, ETIMEDOUT",
		},
		{
			name:     "lost",
			requests: []request{req(outcomeLost, 0, 0)},
			want:     "1 sent, 0 ok, 1 lost, 0 wrong, max latency 0s",
			problem:  "4096 B request lost",
		},
		{
			name:     "wrong reply",
			requests: []request{req(outcomeWrong, 0, 0)},
			want:     "1 sent, 0 ok, 0 lost, 1 wrong, max latency 0s",
			problem:  "got a wrong reply",
		},
		{
			name:     "slow",
			requests: []request{req(outcomeOK, 0, 8*time.Second)},
			want:     "1 sent, 1 ok, 0 lost, 0 wrong, max latency 8s",
			problem:  "took 8s, over the 7s limit",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summarize(tt.requests, allowed, 7*time.Second)
			if got := s.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			switch {
			case tt.problem == "" && len(s.Problems) > 0:
				t.Errorf("Problems = %q, want none", s.Problems)
			case tt.problem != "" && (len(s.Problems) == 0 || !strings.Contains(s.Problems[0], tt.problem)):
				t.Errorf("Problems = %q, want one containing %q", s.Problems, tt.problem)
			}
		})
	}
}

func TestSummarizeLimitsProblems(t *testing.T) {
	var requests []request
	for range 10 {
		requests = append(requests, request{outcome: outcomeLost, err: errors.New("x")})
	}
	s := summarize(requests, nil, time.Second)
	if s.Lost != 10 {
		t.Errorf("Lost = %d, want 10", s.Lost)
	}
	if len(s.Problems) != maxProblems {
		t.Errorf("%d problems, want %d", len(s.Problems), maxProblems)
	}
}

func TestLoadStatsAdd(t *testing.T) {
	var total loadStats
	total.add(loadStats{Sent: 3, OK: 2, Errnos: map[unix.Errno]int{unix.ECONNRESET: 1}, MaxLatency: time.Second})
	total.add(loadStats{Sent: 4, OK: 2, Errnos: map[unix.Errno]int{unix.ECONNRESET: 1}, Lost: 1, MaxLatency: time.Millisecond})
	if got, want := total.String(), "7 sent, 4 ok, 2 ECONNRESET, 1 lost, 0 wrong, max latency 1s"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if total.Failed() != 2 {
		t.Errorf("Failed() = %d, want 2", total.Failed())
	}
}

func TestRecordTime(t *testing.T) {
	tests := []struct {
		record string
		want   time.Duration
		text   string
	}{
		{"16.942754 Out of memory: Killed process 179", 16942754 * time.Microsecond, "Out of memory: Killed process 179"},
		{"0.000001 x", time.Microsecond, "x"},
	}
	for _, tt := range tests {
		got, err := recordTime(tt.record)
		if err != nil || got != tt.want {
			t.Errorf("recordTime(%q) = %v, %v, want %v", tt.record, got, err, tt.want)
		}
		if text := recordText(tt.record); text != tt.text {
			t.Errorf("recordText(%q) = %q, want %q", tt.record, text, tt.text)
		}
	}
	for _, bad := range []string{"", "umhblob: helper 1 ready", "1.5 x", "a.000001 x"} {
		if _, err := recordTime(bad); err == nil {
			t.Errorf("recordTime(%q) error = nil, want an error", bad)
		}
		if text := recordText(bad); text != bad {
			t.Errorf("recordText(%q) = %q, want it unchanged", bad, text)
		}
	}
}

func TestCheckModuleRecord(t *testing.T) {
	tests := []struct {
		name    string
		records []string
		reasons []string
		want    string // a substring of the detail, or of the error when wantErr
		wantErr bool
	}{
		{
			name:    "exit",
			records: []string{"1.000000 umhblob: helper 9 ready in 5 us", "2.000000 umhblob: helper 90 exited or closed its stdout (-104), killing it", "2.100000 umhblob: helper 9 exited or closed its stdout (-104), killing it"},
			reasons: exitReasons,
			want:    "module: umhblob: helper 9 exited",
		},
		{
			name: "truncated reply",
			records: []string{"2.000000 umhblob: helper 9 sent 4096 of 262144 payload bytes",
				"2.000001 umhblob: helper 9 broke the protocol (-71), killing it"},
			reasons: exitReasons,
			want:    "after umhblob: helper 9 sent 4096 of 262144 payload bytes",
		},
		{
			name:    "protocol break without truncation",
			records: []string{"2.000000 umhblob: helper 9 sent an invalid frame header (-74)", "2.000001 umhblob: helper 9 broke the protocol (-71), killing it"},
			reasons: exitReasons,
			want:    "gives none of the reasons",
			wantErr: true,
		},
		{
			name:    "protocol break expected",
			records: []string{"2.000001 umhblob: helper 9 broke the protocol (-71), killing it"},
			reasons: []string{"broke the protocol"},
			want:    "broke the protocol",
		},
		{
			name:    "no record",
			records: []string{"1.000000 umhblob_helper[9]: started, protocol 1"},
			reasons: exitReasons,
			want:    `its records: ["umhblob_helper[9]: started, protocol 1"]`,
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			detail, err := checkModuleRecord(tt.records, 9, tt.reasons)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("checkModuleRecord error = %v, want one containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("checkModuleRecord error: %v", err)
			}
			if !strings.Contains(detail, tt.want) {
				t.Errorf("checkModuleRecord = %q, want it to contain %q", detail, tt.want)
			}
		})
	}
}

func TestOOMKillDelay(t *testing.T) {
	records := []string{
		"16.942754 Out of memory: Killed process 179 (umhblob_helper) total-vm:1227568kB",
		"16.952250 umhblob: helper 179 closed its stdin (-32), killing it",
	}
	got, err := oomKillDelay(records, 179)
	if err != nil || got != 9496*time.Microsecond {
		t.Errorf("oomKillDelay = %v, %v, want 9.496ms", got, err)
	}
	if _, err := oomKillDelay(records[1:], 179); err == nil {
		t.Error("oomKillDelay without the OOM record: error = nil, want an error")
	}
}

func TestCompareLeakFigures(t *testing.T) {
	base := leakFigures{files: 32, mounts: "rootfs / rootfs rw 0 0\n", memAvailable: 450000, slab: 3000, shmem: 5000}
	if err := compareLeakFigures(base, base); err != nil {
		t.Errorf("compareLeakFigures(same) error: %v", err)
	}
	tests := []struct {
		change func(*leakFigures)
		want   string
	}{
		{func(f *leakFigures) { f.files += fileLimit + 1 }, "allocated files grew by 65"},
		{func(f *leakFigures) { f.mounts += "debugfs /sys/kernel/debug debugfs rw 0 0\n" }, "/proc/mounts changed"},
		{func(f *leakFigures) { f.memAvailable -= availableLimitKiB + 1 }, "MemAvailable fell by 8193 KiB"},
		{func(f *leakFigures) { f.slab += slabLimitKiB + 1 }, "Slab grew by 2049 KiB"},
		{func(f *leakFigures) { f.shmem += 200 * 1600 }, "Shmem grew by 320000 KiB"},
	}
	for _, tt := range tests {
		after := base
		tt.change(&after)
		if err := compareLeakFigures(base, after); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("compareLeakFigures error = %v, want one containing %q", err, tt.want)
		}
	}
}

func TestFaultsCoverReport(t *testing.T) {
	var names []string
	for _, f := range faults() {
		names = append(names, f.step)
		if f.inject == nil || len(f.allowed) == 0 || len(f.reasons) == 0 {
			t.Errorf("fault %s lacks an inject function, allowed errnos or reasons", f.step)
		}
	}
	var want []string
	for _, name := range report.FaultSteps {
		if strings.HasPrefix(name, "fault-") {
			want = append(want, name)
		}
	}
	if !slices.Equal(names, want) {
		t.Errorf("faults() steps = %v, want the fault-* steps of report.FaultSteps %v", names, want)
	}
}

func TestPipeSizesFitPipeBuf(t *testing.T) {
	for _, size := range pipeSizes {
		if frame := 24 + size; frame > pipeBuf {
			t.Errorf("pipeSizes has %d, a %d-byte frame, more than PIPE_BUF %d", size, frame, pipeBuf)
		}
	}
}

// blockingPipeT returns a pipe in blocking mode, unlike os.Pipe, and
// closes it at the end of the test.
func blockingPipeT(t testing.TB) (r, w int) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

func TestPipeBytesAndCapacity(t *testing.T) {
	r, w := blockingPipeT(t)
	if _, err := unix.Write(w, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{r, w} {
		n, err := pipeBytes(os.Getpid(), fd)
		if err != nil || n != 100 {
			t.Errorf("pipeBytes(self, %d) = %d, %v, want 100", fd, n, err)
		}
	}
	if n, err := pipeCapacity(os.Getpid(), w); err != nil || n != 64<<10 {
		t.Errorf("pipeCapacity(self, %d) = %d, %v, want 65536", w, n, err)
	}
}

// fillPipeT fills the pipe with write end w, so the next write blocks.
func fillPipeT(t testing.TB, w int) {
	t.Helper()
	if err := unix.SetNonblock(w, true); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := unix.Write(w, make([]byte, 4096)); errors.Is(err, unix.EAGAIN) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.SetNonblock(w, false); err != nil {
		t.Fatal(err)
	}
}

func TestThreadWriteEINTR(t *testing.T) {
	r, w := blockingPipeT(t)
	fillPipeT(t, w)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGUSR1)
	defer signal.Stop(sigs)
	restore, err := clearSARestart(unix.SIGUSR1)
	if err != nil {
		t.Fatalf("clearSARestart: %v", err)
	}
	defer restore()

	tw := startThreadWrite(&device{fd: w}, []byte("blocked"))
	if err := waitInWrite(tw.tid, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := unix.Tgkill(unix.Getpid(), tw.tid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-tw.done:
		if !errors.Is(err, unix.EINTR) {
			t.Errorf("write after SIGUSR1 = %v, want EINTR", err)
		}
	case <-time.After(5 * time.Second):
		unix.Read(r, make([]byte, 64<<10)) // unblock the write
		t.Fatal("write still blocked 5s after SIGUSR1 without SA_RESTART")
	}
	<-sigs
}

func TestThreadWriteRestarts(t *testing.T) {
	r, w := blockingPipeT(t)
	fillPipeT(t, w)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGUSR1)
	defer signal.Stop(sigs)

	tw := startThreadWrite(&device{fd: w}, []byte("blocked"))
	if err := waitInWrite(tw.tid, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := unix.Tgkill(unix.Getpid(), tw.tid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	<-sigs
	select {
	case err := <-tw.done:
		t.Fatalf("write returned %v after SIGUSR1 with SA_RESTART, want it restarted and blocked", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := unix.Read(r, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := <-tw.done; err != nil {
		t.Errorf("restarted write = %v, want nil once the pipe has room", err)
	}
}

func TestClearSARestartRestores(t *testing.T) {
	var before, cleared, after kernelSigaction
	if err := rtSigaction(unix.SIGUSR2, nil, &before); err != nil {
		t.Fatal(err)
	}
	restore, err := clearSARestart(unix.SIGUSR2)
	if err != nil {
		t.Fatal(err)
	}
	if err := rtSigaction(unix.SIGUSR2, nil, &cleared); err != nil {
		t.Fatal(err)
	}
	restore()
	if err := rtSigaction(unix.SIGUSR2, nil, &after); err != nil {
		t.Fatal(err)
	}
	if cleared.flags&saRestart != 0 || cleared.handler != before.handler {
		t.Errorf("after clearSARestart: flags %#x, handler %#x; want no SA_RESTART and handler %#x", cleared.flags, cleared.handler, before.handler)
	}
	if after != before {
		t.Errorf("after restore: %+v, want %+v", after, before)
	}
}

func TestProcessGone(t *testing.T) {
	if processGone(os.Getpid()) {
		t.Error("processGone(self) = true, want false")
	}
	// Linux never hands out pid_max, which is at most 4194304.
	if !processGone(1 << 22) {
		t.Error("processGone(4194304) = false, want true")
	}
}

func TestCheckDetection(t *testing.T) {
	byStep := make(map[string]fault)
	for _, f := range faults() {
		byStep[f.step] = f
	}
	noScale := func(d time.Duration) time.Duration { return d }
	tests := []struct {
		step    string
		timeout time.Duration
		detect  time.Duration
		restart time.Duration
		want    string // a substring of the first problem, or "" for none
	}{
		{report.StepFaultSIGKILL, 5 * time.Second, 20 * time.Millisecond, 300 * time.Millisecond, ""},
		{report.StepFaultSIGKILL, 5 * time.Second, 1500 * time.Millisecond, 300 * time.Millisecond, "noticed the SIGKILL 1.5s after it, more than 1s"},
		{report.StepFaultSIGKILL, 5 * time.Second, 20 * time.Millisecond, 4 * time.Second, "ready 4s after the module noticed the SIGKILL, more than 3s"},
		{report.StepFaultSIGSTOP, time.Second, 1100 * time.Millisecond, 300 * time.Millisecond, ""},
		{report.StepFaultSIGSTOP, time.Second, 400 * time.Millisecond, 300 * time.Millisecond, "less than half the 1s request timeout"},
		{report.StepFaultSIGSTOP, time.Second, 2500 * time.Millisecond, 300 * time.Millisecond, "more than 1s after the 1s request timeout"},
		{report.StepFaultOOM, 5 * time.Second, 2500 * time.Millisecond, 5 * time.Second, ""},
		{report.StepFaultOOM, 5 * time.Second, 11 * time.Second, 300 * time.Millisecond, "noticed the OOM kill 11s after it, more than 10s"},
	}
	for _, tt := range tests {
		res := faultResult{step: tt.step, detect: tt.detect, restart: tt.restart}
		problems := checkDetection(byStep[tt.step], tt.timeout, res, noScale)
		switch {
		case tt.want == "" && len(problems) > 0:
			t.Errorf("%s, detect %v, restart %v: problems %q, want none", tt.step, tt.detect, tt.restart, problems)
		case tt.want != "" && (len(problems) == 0 || !strings.Contains(problems[0], tt.want)):
			t.Errorf("%s, detect %v, restart %v: problems %q, want one containing %q", tt.step, tt.detect, tt.restart, problems, tt.want)
		}
	}
}

func TestScaleFollowsFirstLoad(t *testing.T) {
	tests := []struct {
		load time.Duration
		want time.Duration // scale(time.Second)
	}{
		{0, time.Second},
		{100 * time.Millisecond, time.Second},
		{referenceLoad, time.Second},
		{4 * referenceLoad, 4 * time.Second},
	}
	for _, tt := range tests {
		g := &guest{}
		g.setSlowdown(tt.load)
		if got := g.scale(time.Second); got != tt.want {
			t.Errorf("after a %v insmod, scale(1s) = %v, want %v", tt.load, got, tt.want)
		}
	}
	if got := (&guest{}).scale(time.Second); got != time.Second {
		t.Errorf("scale(1s) before any insmod = %v, want 1s", got)
	}
}

func TestFirstLeaks(t *testing.T) {
	object := func(addr string) string {
		return "unreferenced object 0x" + addr + " (size 512):\n  comm \"insmod\"\n  backtrace:\n    kmalloc_trace+0x26/0x60\n"
	}
	report := object("1") + object("2") + object("3") + object("4")
	if got, want := firstLeaks(report, 3), object("1")+object("2")+object("3"); got != want {
		t.Errorf("firstLeaks(4 objects, 3) = %q, want %q", got, want)
	}
	if got := firstLeaks(object("1"), 3); got != object("1") {
		t.Errorf("firstLeaks(1 object, 3) = %q, want it whole", got)
	}
}
