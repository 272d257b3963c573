package main

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/harness/report"
)

// Limits of the fault steps, before guest.scale adapts them to a slower
// guest. They are several times the times measured in a 2-vCPU TCG guest
// (see the step details), so they catch a module that hangs or waits for
// the wrong event, not a slow machine.
const (
	detectLimit   = time.Second      // from a helper's death to the module noticing
	restartLimit  = 3 * time.Second  // from noticing to a new helper after the handshake
	unloadLimit   = 5 * time.Second  // delete_module right after a fault
	latencyMargin = 2 * time.Second  // over the request timeout, for any one request
	serveTimeout  = 10 * time.Second // for every caller to get its replies
	servedReplies = 3                // replies per caller before and after a fault

	// The OOM killer stalls the whole guest while it prints its report
	// on the serial console, and a helper started while memory is short
	// can fail and be started again with back-off. An OOM victim can
	// also take seconds to exit. Up to 2.6 s after the kill were measured
	// on 6.1 and 4.6 s on 6.12, in runs where the victim exited only once
	// the OOM killer had killed the memory hog too.
	oomDetectLimit  = 10 * time.Second
	oomRestartLimit = 15 * time.Second
	oomUnloadLimit  = 15 * time.Second
)

// garbage is the bytes that the garbage faults write into the helper's
// pipes. They cannot start a valid frame, because the magic is "UMHB".
var garbage = bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 16)

// fault is one way to break the helper from outside, as an administrator
// could.
type fault struct {
	step    string
	name    string        // in messages, such as SIGKILL
	sizes   []int         // payload sizes of the load
	timeout time.Duration // request_timeout_ms during the step; 0 keeps the default
	allowed []unix.Errno  // errnos a caller may get
	// reasons lists the texts that the module's record for the broken
	// helper may contain, such as "stopped answering".
	reasons []string
	// deadUnload also unloads the module once a killed helper has
	// disappeared from /proc, besides right after the fault.
	deadUnload bool

	// inject breaks helper pid and returns a function that undoes what
	// the fault left behind, such as an open file or a child process.
	inject func(g *guest, pid int) (undo func(), err error)
	// killDelay, when set, returns how long before the module's record
	// the helper died, for faults whose moment the guest cannot see.
	killDelay func(records []string, pid int) (time.Duration, error)
	// verify checks the kernel log for evidence that the fault worked
	// as intended, and returns that evidence.
	verify func(records []string, pid int) (string, error)
}

// faultResult holds the figures of one fault step for the totals.
type faultResult struct {
	step       string
	detect     time.Duration // fault to helper_pid no longer showing the old helper
	restart    time.Duration // from then to helper_pid showing a new helper
	unload     time.Duration // worst delete_module right after the fault
	busyUnload time.Duration // delete_module failing while callers had the device open
	stats      loadStats
	passed     bool
}

var (
	// exitReasons are the module's texts for a helper that exited. The
	// reader thread gets end of file, or the writer thread gets EPIPE
	// first.
	exitReasons = []string{"exited or closed its stdout", "closed its stdin"}
	// connErrnos are the errnos of a request to a helper that dies.
	connErrnos = []unix.Errno{unix.ECONNRESET, unix.ETIMEDOUT, unix.EINTR}
)

// faults returns the fault kinds in the order of their steps.
func faults() []fault {
	return []fault{
		{step: report.StepFaultSIGKILL, name: "SIGKILL", sizes: mixedSizes, allowed: connErrnos, reasons: exitReasons,
			inject: signalHelper(unix.SIGKILL), deadUnload: true},
		{step: report.StepFaultSIGSEGV, name: "SIGSEGV", sizes: mixedSizes, allowed: connErrnos, reasons: exitReasons,
			inject: signalHelper(unix.SIGSEGV)},
		{step: report.StepFaultSIGTERM, name: "SIGTERM", sizes: mixedSizes, allowed: connErrnos, reasons: exitReasons,
			inject: signalHelper(unix.SIGTERM)},
		{step: report.StepFaultSIGSTOP, name: "SIGSTOP", sizes: mixedSizes, timeout: time.Second, allowed: connErrnos,
			reasons: []string{"stopped answering"}, inject: stopHelper, verify: verifyTimeout},
		{step: report.StepFaultOOM, name: "OOM kill", sizes: mixedSizes, allowed: slices.Concat(connErrnos, []unix.Errno{unix.ENOMEM}), reasons: exitReasons,
			inject: injectOOM, killDelay: oomKillDelay, verify: verifyOOM},
		// Bytes that land inside a frame of more than PIPE_BUF bytes
		// corrupt its payload, which nothing can detect, so these two
		// loads keep every frame within PIPE_BUF.
		{step: report.StepFaultStdin, name: "garbage on stdin", sizes: pipeSizes, allowed: connErrnos, reasons: exitReasons,
			inject: writeGarbage(0), verify: verifyHelperRejected},
		{step: report.StepFaultStdout, name: "garbage on stdout", sizes: pipeSizes, allowed: connErrnos,
			reasons: []string{"broke the protocol"}, inject: writeGarbage(1), verify: verifyModuleRejected},
	}
}

// signalHelper returns an inject function that sends sig to the helper.
func signalHelper(sig unix.Signal) func(*guest, int) (func(), error) {
	return func(_ *guest, pid int) (func(), error) {
		if err := unix.Kill(pid, sig); err != nil {
			return nil, fmt.Errorf("send %v to helper %d: %w", unix.SignalName(sig), pid, err)
		}
		return func() {}, nil
	}
}

// stopHelper stops the helper and waits until it is stopped. Then only
// the module's request timeout can end it. The undo function resumes a
// helper that the module failed to kill.
func stopHelper(_ *guest, pid int) (func(), error) {
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		return nil, fmt.Errorf("send SIGSTOP to helper %d: %w", pid, err)
	}
	undo := func() { unix.Kill(pid, unix.SIGCONT) }
	if err := waitThreadsStopped(pid, time.Second); err != nil {
		undo()
		return nil, err
	}
	return undo, nil
}

// writeGarbage returns an inject function that opens file descriptor fd
// of the helper through /proc for writing, which gives a new write end of
// that pipe, and writes garbage into it. The undo function closes that
// write end, which would otherwise keep the pipe open.
func writeGarbage(fd int) func(*guest, int) (func(), error) {
	return func(_ *guest, pid int) (func(), error) {
		path := fmt.Sprintf("/proc/%d/fd/%d", pid, fd)
		f, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s for writing: %w", path, err)
		}
		n, err := unix.Write(f, garbage)
		if err != nil || n != len(garbage) {
			unix.Close(f)
			return nil, fmt.Errorf("write %d garbage bytes to %s: wrote %d, error %v", len(garbage), path, n, err)
		}
		return func() { unix.Close(f) }, nil
	}
}

// faultRun is the state of one fault step.
type faultRun struct {
	f          fault
	before     helperStatus  // right after the load
	timeout    time.Duration // request_timeout_ms during the step
	res        faultResult
	newPID     int
	firstReply time.Duration // from the fault to the new helper's first reply
	busyErrno  string        // from delete_module while the callers had the device open
	records    []string      // the kernel log after the fault
	problems   []string
}

func (r *faultRun) fail(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// runFault loads the module, starts the callers and breaks the helper
// with fault f. It checks that every request got its reply or an allowed
// errno in time, that the module noticed, killed and replaced the helper,
// and that the new helper serves. It then breaks the new helper the same
// way and unloads the module right away.
func (g *guest) runFault(f fault) (string, error) {
	st, err := g.loadFresh()
	if err != nil {
		return "", err
	}
	if f.timeout > 0 {
		// A slow kernel (KASAN, TCG) also slows a healthy new helper,
		// which a lowered timeout must not take for a stopped one.
		lowered := g.scale(f.timeout)
		restore, err := setParam("request_timeout_ms", strconv.FormatInt(lowered.Milliseconds(), 10))
		if err != nil {
			return "", err
		}
		defer restore()
	}
	timeout, err := requestTimeout()
	if err != nil {
		return "", err
	}

	r := &faultRun{f: f, before: st, timeout: timeout, res: faultResult{step: f.step}}
	if detail, err := r.underLoad(g); err != nil {
		return detail, err
	}
	logDetail := r.check(g)
	unloadDetail, err := g.unloadAfterFault(f, &r.res)
	if err != nil {
		r.fail("%v", err)
	}
	r.res.passed = len(r.problems) == 0
	g.faultResults = append(g.faultResults, r.res)

	detail := fmt.Sprintf("%s: helper %d -> %d, detected after %v, restarted %v later, first reply from the new helper %v after the fault; "+
		"request timeout %v; %d callers: %v; rmmod with the device open %s in %v; %s; %s",
		f.name, st.PID, r.newPID, r.res.detect.Round(time.Microsecond), r.res.restart.Round(time.Microsecond),
		r.firstReply.Round(time.Microsecond), timeout, loadCallers, r.res.stats, r.busyErrno,
		r.res.busyUnload.Round(time.Microsecond), unloadDetail, logDetail)
	if len(r.problems) > 0 {
		return detail, errors.New(strings.Join(r.problems, "; "))
	}
	return detail, nil
}

// underLoad starts the callers, injects the fault, waits for the new
// helper and for every caller to get replies from it, and stops the
// callers. An error means the step cannot go on: no new helper, or a
// caller that never got its first replies.
func (r *faultRun) underLoad(g *guest) (string, error) {
	f, limit := r.f, r.timeout+g.scale(latencyMargin)
	l, err := startLoad(f.sizes, uint64(len(g.faultResults)+1))
	if err != nil {
		return "", err
	}
	defer l.finish(limit)
	// abort stops the load and fails the step with err, the load's
	// figures and any caller left blocked in the module.
	abort := func(err error) (string, error) {
		blocked := l.finish(limit)
		return summarize(l.snapshot(), f.allowed, limit).String(), errors.Join(err, blockedError(blocked))
	}
	if _, err := l.waitServed(time.Time{}, servedReplies, g.scale(serveTimeout)); err != nil {
		return abort(fmt.Errorf("before the fault: %w", err))
	}

	w := watchHelperPID(r.before.PID)
	start := time.Now()
	undo, err := f.inject(g, r.before.PID)
	if err != nil {
		close(w.stop)
		return abort(err)
	}
	// The callers hold the device open, and some may be blocked on the
	// broken helper: rmmod must fail at once all the same.
	r.busyErrno, r.res.busyUnload, err = unloadBusy(g.scale(busyUnloadLimit))
	if err != nil {
		r.fail("%v", err)
	}
	// The OOM fault returns only after the kill, which can take a minute
	// on a debug kernel, so the wait starts when inject returns.
	waited := r.timeout + g.scale(restartLimit+oomExtra(f))
	w.wait(time.Now().Add(waited))
	undo()
	if r.records, err = kernelLog(); err != nil {
		return abort(err)
	}
	if f.killDelay != nil && !w.detected.IsZero() {
		delay, err := f.killDelay(r.records, r.before.PID)
		if err != nil {
			return abort(err)
		}
		start = w.detected.Add(-delay)
	}
	if err := w.check(start, waited); err != nil {
		return abort(err)
	}
	r.newPID = w.newPID
	r.res.detect = w.detected.Sub(start)
	r.res.restart = w.restarted.Sub(w.detected)

	firstReply, err := l.waitServed(w.restarted, servedReplies, g.scale(serveTimeout))
	if err != nil {
		r.fail("after the restart: %v", err)
	}
	if !firstReply.IsZero() {
		r.firstReply = firstReply.Sub(start)
	}
	if err := blockedError(l.finish(limit)); err != nil {
		r.fail("%v", err)
	}
	r.res.stats = summarize(l.snapshot(), f.allowed, limit)
	for _, p := range r.res.stats.Problems {
		r.fail("%s", p)
	}
	return "", nil
}

// check checks the times, the new helper and the kernel log, and returns
// the kernel log records that show how the module saw the fault.
func (r *faultRun) check(g *guest) string {
	r.problems = append(r.problems, checkDetection(r.f, r.timeout, r.res, g.scale)...)
	if err := checkReplacement(r.before, r.newPID, r.f.step == report.StepFaultOOM); err != nil {
		r.fail("%v", err)
	}
	logDetail, err := checkModuleRecord(r.records, r.before.PID, r.f.reasons)
	if err != nil {
		r.fail("%v", err)
	}
	if r.f.verify != nil {
		evidence, err := r.f.verify(r.records, r.before.PID)
		if err != nil {
			r.fail("%v", err)
		} else {
			logDetail += "; " + evidence
		}
	}
	return logDetail
}

// oomExtra is the time an OOM fault may take beyond the other faults.
func oomExtra(f fault) time.Duration {
	if f.step == report.StepFaultOOM {
		return oomRestartLimit
	}
	return 0
}

// blockedError returns an error that lists the blocked callers, or nil.
func blockedError(blocked []string) error {
	if len(blocked) == 0 {
		return nil
	}
	return fmt.Errorf("%d callers hung in the module: %s", len(blocked), strings.Join(blocked, ", "))
}

// checkDetection checks the time to notice the fault and to restart,
// with limits adapted by scale. A stopped helper is noticed only when a
// request times out, which can be less than the timeout after SIGSTOP
// because the request started before it. On the debug kernel requests
// took up to 0.6 s, so half the timeout is the lower bound.
func checkDetection(f fault, timeout time.Duration, res faultResult, scale func(time.Duration) time.Duration) []string {
	var problems []string
	detectMax, restartMax := scale(detectLimit), scale(restartLimit+oomExtra(f))
	if f.step == report.StepFaultOOM {
		detectMax = scale(oomDetectLimit)
	}
	switch {
	case f.step == report.StepFaultSIGSTOP && res.detect < timeout/2:
		problems = append(problems, fmt.Sprintf("the stopped helper was replaced %v after SIGSTOP, less than half the %v request timeout", res.detect.Round(time.Millisecond), timeout))
	case f.step == report.StepFaultSIGSTOP && res.detect > timeout+detectMax:
		problems = append(problems, fmt.Sprintf("the stopped helper was replaced %v after SIGSTOP, more than %v after the %v request timeout", res.detect.Round(time.Millisecond), detectMax, timeout))
	case f.step != report.StepFaultSIGSTOP && res.detect > detectMax:
		problems = append(problems, fmt.Sprintf("the module noticed the %s %v after it, more than %v", f.name, res.detect.Round(time.Millisecond), detectMax))
	}
	if res.restart > restartMax {
		problems = append(problems, fmt.Sprintf("the new helper was ready %v after the module noticed the %s, more than %v", res.restart.Round(time.Millisecond), f.name, restartMax))
	}
	return problems
}

// checkReplacement checks that exactly one new helper started (at least
// one after an OOM kill, where a helper started short of memory can die
// too), that it is the one in helper_pid, and that the old one is gone.
func checkReplacement(before helperStatus, newPID int, oom bool) error {
	now, err := readStatus()
	if err != nil {
		return err
	}
	started := now.Starts - before.Starts
	if started != 1 && !(oom && started > 1) {
		return fmt.Errorf("helper_starts went from %d to %d, want one new helper", before.Starts, now.Starts)
	}
	if !oom && now.PID != newPID {
		return fmt.Errorf("helper_pid is %d, want the new helper %d", now.PID, newPID)
	}
	if _, err := checkHelper(now.PID); err != nil {
		return err
	}
	if _, _, err := waitGone(before.PID, goneTimeout); err != nil {
		return fmt.Errorf("old helper: %w", err)
	}
	return nil
}

// checkModuleRecord finds the module's kernel log record that declares
// helper pid broken and checks that it gives one of reasons. When reasons
// are exitReasons, it also accepts a protocol break caused by a reply that
// the dying helper left truncated: a reply larger than the pipe is
// written in pieces, and the helper can die between two of them.
func checkModuleRecord(records []string, pid int, reasons []string) (string, error) {
	prefix := fmt.Sprintf("%s: helper %d ", moduleName, pid)
	record, ok := findRecord(records, prefix, "killing it")
	if !ok {
		return "", fmt.Errorf("no kernel log record %q...\"killing it\" for the old helper; its records: %q", prefix, helperRecords(records, pid))
	}
	for _, reason := range reasons {
		if strings.Contains(record, prefix+reason) {
			return "module: " + recordText(record), nil
		}
	}
	if slices.Equal(reasons, exitReasons) && strings.Contains(record, prefix+"broke the protocol") {
		for _, truncation := range []string{"payload bytes", "truncated header"} {
			if cut, ok := findRecord(records, prefix+"sent ", truncation); ok {
				return fmt.Sprintf("module: %s after %s", recordText(record), recordText(cut)), nil
			}
		}
	}
	return "", fmt.Errorf("module record %q gives none of the reasons %q; the helper's records: %q", recordText(record), reasons, helperRecords(records, pid))
}

// helperRecords returns the texts of the kernel log records that the
// module or the helper wrote about helper pid.
func helperRecords(records []string, pid int) []string {
	var texts []string
	for _, r := range records {
		if strings.Contains(r, fmt.Sprintf("%s: helper %d ", moduleName, pid)) || strings.Contains(r, fmt.Sprintf("%s[%d]: ", helperName, pid)) {
			texts = append(texts, recordText(r))
		}
	}
	return texts
}

// verifyTimeout checks that the module reported the request timeout.
func verifyTimeout(records []string, pid int) (string, error) {
	prefix := fmt.Sprintf("%s: helper %d did not answer request", moduleName, pid)
	record, ok := findRecord(records, prefix)
	if !ok {
		return "", fmt.Errorf("no kernel log record %q", prefix)
	}
	return "module: " + recordText(record), nil
}

// verifyHelperRejected checks that the helper itself rejected the garbage
// on its stdin and exited with status 2.
func verifyHelperRejected(records []string, pid int) (string, error) {
	prefix := fmt.Sprintf("%s[%d]: exiting with status 2", helperName, pid)
	record, ok := findRecord(records, prefix)
	if !ok {
		return "", fmt.Errorf("no kernel log record %q: the helper did not reject the garbage on its stdin", prefix)
	}
	return "helper: " + recordText(record), nil
}

// verifyModuleRejected checks that the module rejected the garbage frame
// header that it read from the helper's stdout.
func verifyModuleRejected(records []string, pid int) (string, error) {
	prefix := fmt.Sprintf("%s: helper %d sent an invalid frame header", moduleName, pid)
	record, ok := findRecord(records, prefix)
	if !ok {
		return "", fmt.Errorf("no kernel log record %q", prefix)
	}
	return "module: " + recordText(record), nil
}

// unloadAfterFault breaks the new helper once more, with no callers, and
// unloads the module right away. For f.deadUnload it also loads the
// module again and unloads it after its killed helper has disappeared.
// It records the worst unload time in res.
func (g *guest) unloadAfterFault(f fault, res *faultResult) (string, error) {
	limit := g.scale(unloadLimit)
	if f.step == report.StepFaultOOM {
		limit = g.scale(oomUnloadLimit)
	}
	elapsed, err := g.unloadRightAfter(f, false)
	res.unload = elapsed
	detail := fmt.Sprintf("rmmod right after the %s %v", f.name, elapsed.Round(time.Microsecond))
	if err != nil {
		return detail, fmt.Errorf("rmmod right after the %s: %w", f.name, err)
	}
	if elapsed > limit {
		return detail, fmt.Errorf("rmmod right after the %s took %v, more than %v", f.name, elapsed.Round(time.Millisecond), limit)
	}
	if !f.deadUnload {
		return detail, nil
	}

	if _, err := g.loadFresh(); err != nil {
		return detail, err
	}
	elapsed, err = g.unloadRightAfter(f, true)
	res.unload = max(res.unload, elapsed)
	detail += fmt.Sprintf(", with the helper already gone %v", elapsed.Round(time.Microsecond))
	if err != nil {
		return detail, fmt.Errorf("rmmod with the killed helper gone: %w", err)
	}
	if elapsed > limit {
		return detail, fmt.Errorf("rmmod with the killed helper gone took %v, more than %v", elapsed.Round(time.Millisecond), limit)
	}
	return detail, nil
}

// unloadRightAfter injects f into the current helper and unloads the
// module, at once or, with dead, once the helper has left /proc.
func (g *guest) unloadRightAfter(f fault, dead bool) (time.Duration, error) {
	pid, err := readHelperPID()
	if err != nil {
		return 0, err
	}
	undo, err := f.inject(g, pid)
	if err != nil {
		return 0, err
	}
	defer undo()
	if dead {
		if _, _, err := waitGone(pid, time.Second); err != nil {
			return 0, err
		}
	}
	elapsed, err := unload()
	if err != nil {
		return elapsed, err
	}
	g.pid = 0
	_, err = checkUnloaded(pid)
	return elapsed, err
}

// faultTotals sums the fault steps: requests by outcome, the worst
// times, and SIGPIPE signals seen by the guest.
func (g *guest) faultTotals() (string, error) {
	var total loadStats
	var worstDetect, worstRestart, worstUnload, worstBusy, stopped, oom faultResult
	var passed []string
	for _, r := range g.faultResults {
		total.add(r.stats)
		if r.passed {
			passed = append(passed, r.step)
		}
		switch r.step {
		case report.StepFaultSIGSTOP:
			stopped = r
		case report.StepFaultOOM:
			oom = r
		default:
			if r.detect >= worstDetect.detect {
				worstDetect = r
			}
		}
		if r.restart >= worstRestart.restart {
			worstRestart = r
		}
		if r.unload >= worstUnload.unload {
			worstUnload = r
		}
		if r.busyUnload >= worstBusy.busyUnload {
			worstBusy = r
		}
	}
	sigpipes := g.sigpipes.Load()
	detail := fmt.Sprintf("%d of %d fault steps ran to the end, %d passed: %v; worst detection of a killed or broken helper %v (%s), "+
		"of an OOM kill %v, of a stopped helper %v; worst restart %v (%s); worst rmmod after a fault %v (%s); "+
		"worst failed rmmod with the device open %v (%s); SIGPIPE signals to the guest: %d",
		len(g.faultResults), len(faults()), len(passed), total, worstDetect.detect.Round(time.Microsecond), worstDetect.step,
		oom.detect.Round(time.Microsecond), stopped.detect.Round(time.Microsecond),
		worstRestart.restart.Round(time.Microsecond), worstRestart.step, worstUnload.unload.Round(time.Microsecond), worstUnload.step,
		worstBusy.busyUnload.Round(time.Microsecond), worstBusy.step, sigpipes)
	switch {
	case len(passed) != len(faults()):
		return detail, fmt.Errorf("%d of %d fault steps passed", len(passed), len(faults()))
	case total.Lost > 0 || total.Wrong > 0:
		return detail, fmt.Errorf("%d requests lost and %d wrong replies", total.Lost, total.Wrong)
	case sigpipes > 0:
		return detail, fmt.Errorf("the guest received %d SIGPIPE signals", sigpipes)
	}
	return detail, nil
}

// findRecord returns the first kernel log record that contains every one
// of substrings.
func findRecord(records []string, substrings ...string) (string, bool) {
	for _, r := range records {
		matches := true
		for _, s := range substrings {
			if !strings.Contains(r, s) {
				matches = false
				break
			}
		}
		if matches {
			return r, true
		}
	}
	return "", false
}

// recordTime returns the timestamp of a record from kernelLog, such as
// 1.234567 in "1.234567 umhblob: ...", as a duration since boot.
func recordTime(record string) (time.Duration, error) {
	stamp, _, ok := strings.Cut(record, " ")
	if !ok {
		return 0, fmt.Errorf("kernel log record %q has no timestamp", record)
	}
	seconds, micros, ok := strings.Cut(stamp, ".")
	s, err1 := strconv.ParseInt(seconds, 10, 64)
	us, err2 := strconv.ParseInt(micros, 10, 64)
	if !ok || len(micros) != 6 || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("kernel log record %q has no timestamp", record)
	}
	return time.Duration(s)*time.Second + time.Duration(us)*time.Microsecond, nil
}

// recordText returns a record from kernelLog without its timestamp.
func recordText(record string) string {
	if _, err := recordTime(record); err != nil {
		return record
	}
	_, text, _ := strings.Cut(record, " ")
	return text
}
