package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/proto"
)

const (
	interruptPayload = 1000             // payload bytes of the interrupted request
	pipeWait         = 2 * time.Second  // for the module's writer thread to fill a pipe
	signalWait       = 2 * time.Second  // for a signal to end or restart a write
	replyWait        = 10 * time.Second // for a reply after the helper resumes
)

// threadWrite is a write(2) of one frame on a goroutine locked to its OS
// thread, so that tgkill can signal the very thread blocked in the module.
type threadWrite struct {
	tid  int
	done chan error
}

func startThreadWrite(dev *device, frame []byte) *threadWrite {
	w := &threadWrite{done: make(chan error, 1)}
	tid := make(chan int)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		w.done <- dev.write(frame)
	}()
	w.tid = <-tid
	return w
}

// waitInWrite waits until thread tid of this process sleeps in write(2).
func waitInWrite(tid int, timeout time.Duration) error {
	dir := fmt.Sprintf("/proc/self/task/%d", tid)
	deadline := time.Now().Add(timeout)
	for {
		syscall, err := os.ReadFile(dir + "/syscall")
		if err != nil {
			return err
		}
		nr, _, _ := strings.Cut(string(syscall), " ")
		if nr == strconv.Itoa(unix.SYS_WRITE) && threadState(dir) == "S" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("thread %d is not sleeping in write(2) after %v: %s is %q", tid, timeout, dir+"/syscall", strings.TrimSpace(string(syscall)))
		}
		time.Sleep(time.Millisecond)
	}
}

// threadState returns the State letter of dir/status.
func threadState(dir string) string {
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if value, ok := strings.CutPrefix(line, "State:"); ok {
			state, _, _ := strings.Cut(strings.TrimSpace(value), " ")
			return state
		}
	}
	return ""
}

// interruptEINTR interrupts a caller blocked in a request with a signal
// whose handler has no SA_RESTART: write(2) must fail with EINTR, and the
// helper must survive.
func (g *guest) interruptEINTR() (string, error) {
	return g.interrupt(false)
}

// interruptRestart does the same with the Go runtime's SA_RESTART
// handler: the kernel restarts write(2), which sends the request again
// and returns its reply.
func (g *guest) interruptRestart() (string, error) {
	return g.interrupt(true)
}

// interrupt sends SIGUSR1 to a thread blocked in a request to a stopped
// helper. The stopped helper keeps the request unanswered, so it is in
// flight when the signal comes. A second request on another file then
// waits while the helper resumes and replies to both: the late reply to
// the interrupted request must be dropped, not given to anyone, and the
// helper must keep its pid.
func (g *guest) interrupt(restart bool) (string, error) {
	st, err := g.loadFresh()
	if err != nil {
		return "", err
	}
	pid := st.PID
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGUSR1)
	defer signal.Stop(sigs)
	if !restart {
		restore, err := clearSARestart(unix.SIGUSR1)
		if err != nil {
			return "", fmt.Errorf("remove SA_RESTART from the SIGUSR1 handler: %w", err)
		}
		defer restore()
	}

	undo, err := stopHelper(g, pid)
	if err != nil {
		return "", err
	}
	defer undo()
	dev, err := openDevice()
	if err != nil {
		return "", err
	}
	defer dev.Close()

	hA := proto.NewHeader(proto.TypeEcho, g.newID(), interruptPayload)
	payloadA := g.payloads.next(interruptPayload)
	frameA := proto.AppendFrame(nil, hA, payloadA)
	w := startThreadWrite(dev, frameA)
	// The request is in flight once the module's writer thread has put
	// it into the stopped helper's stdin.
	if err := waitPipeBytes(pid, 0, len(frameA), g.scale(pipeWait)); err != nil {
		return "", fmt.Errorf("request A: %w", err)
	}
	if err := waitInWrite(w.tid, g.scale(pipeWait)); err != nil {
		return "", err
	}
	signaled := time.Now()
	if err := unix.Tgkill(unix.Getpid(), w.tid, unix.SIGUSR1); err != nil {
		return "", fmt.Errorf("tgkill SIGUSR1: %w", err)
	}

	pending := len(frameA)
	var interrupted string
	if restart {
		// The restarted write sends the request again with a new pipe
		// id, so the stdin of the stopped helper holds it twice.
		pending *= 2
		if err := waitPipeBytes(pid, 0, pending, g.scale(signalWait)); err != nil {
			return "", fmt.Errorf("after SIGUSR1, want the request sent again: %w", err)
		}
		select {
		case err := <-w.done:
			return "", fmt.Errorf("write returned %v after SIGUSR1, want it restarted and blocked until the helper resumes", err)
		default:
		}
		interrupted = fmt.Sprintf("write restarted and sent the request again %v after SIGUSR1", time.Since(signaled).Round(time.Microsecond))
	} else {
		select {
		case err := <-w.done:
			if !errors.Is(err, unix.EINTR) {
				return "", fmt.Errorf("write after SIGUSR1 returned %v, want EINTR", err)
			}
		case <-time.After(g.scale(signalWait)):
			return "", fmt.Errorf("write still blocked %v after SIGUSR1, want EINTR", g.scale(signalWait))
		}
		interrupted = fmt.Sprintf("write failed with EINTR %v after SIGUSR1", time.Since(signaled).Round(time.Microsecond))
	}
	select {
	case <-sigs:
	case <-time.After(g.scale(signalWait)):
		return interrupted, errors.New("SIGUSR1 never reached the signal handler")
	}
	if err := checkSameHelper(pid, "after the signal"); err != nil {
		return interrupted, err
	}
	if state := processState(pid); state != "T" {
		return interrupted, fmt.Errorf("helper %d is in state %q after the signal, want T: it was not left stopped", pid, state)
	}

	lateDetail, err := g.checkLateReply(pid, pending, undo)
	if err != nil {
		return interrupted, err
	}
	if restart {
		select {
		case err := <-w.done:
			if err != nil {
				return interrupted, fmt.Errorf("restarted write: %w", err)
			}
		case <-time.After(g.scale(replyWait)):
			return interrupted, fmt.Errorf("restarted write still blocked %v after the helper resumed", g.scale(replyWait))
		}
		h, reply, err := dev.readFrame()
		if err != nil {
			return interrupted, fmt.Errorf("read the reply to the restarted request: %w", err)
		}
		if err := checkReply(hA, payloadA, h, reply); err != nil {
			return interrupted, fmt.Errorf("reply to the restarted request: %w", err)
		}
	}
	if err := g.checkFileReusable(dev); err != nil {
		return interrupted, err
	}

	detail, err := checkInterruptCounters(st, restart)
	detail = fmt.Sprintf("helper %d stopped, %s; %s; %s", pid, interrupted, lateDetail, detail)
	if err != nil {
		return detail, err
	}
	dev.Close()
	if _, err := g.unloadChecked(); err != nil {
		return detail, err
	}
	return detail, nil
}

// checkLateReply sends request B on a new file while the stopped helper
// still holds pending bytes of earlier requests, resumes the helper and
// checks that B gets its own reply.
func (g *guest) checkLateReply(pid, pending int, resume func()) (string, error) {
	devB, err := openDevice()
	if err != nil {
		return "", err
	}
	defer devB.Close()
	hB := proto.NewHeader(proto.TypeEcho, g.newID(), interruptPayload)
	payloadB := g.payloads.next(interruptPayload)
	done := make(chan error, 1)
	go func() {
		_, err := devB.roundTrip(hB, payloadB)
		done <- err
	}()
	if err := waitPipeBytes(pid, 0, pending+proto.HeaderSize+interruptPayload, g.scale(pipeWait)); err != nil {
		return "", fmt.Errorf("request B: %w", err)
	}

	resume()
	select {
	case err := <-done:
		if err != nil {
			return "", fmt.Errorf("request B after the helper resumed: %w", err)
		}
	case <-time.After(g.scale(replyWait)):
		return "", fmt.Errorf("request B still blocked %v after the helper resumed", g.scale(replyWait))
	}
	if err := checkSameHelper(pid, "after the late reply"); err != nil {
		return "", err
	}
	return "after SIGCONT request B on another file got its own reply, not the late one", nil
}

// checkFileReusable checks that the interrupted file holds no reply and
// serves the next request.
func (g *guest) checkFileReusable(dev *device) error {
	if n, err := unix.Read(dev.fd, make([]byte, proto.HeaderSize)); !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("read on the interrupted file returned %d bytes, error %v; want ENODATA", n, err)
	}
	size := 4096
	if _, err := dev.roundTrip(proto.NewHeader(proto.TypeEcho, g.newID(), size), g.payloads.next(size)); err != nil {
		return fmt.Errorf("next request on the interrupted file: %w", err)
	}
	return nil
}

// checkInterruptCounters checks the module's counters: the same helper,
// one error for the interrupted call, and one more successful request
// when the kernel restarted it. Each request that another signal
// restarts adds one request and one error.
func checkInterruptCounters(before helperStatus, restart bool) (string, error) {
	now, err := readStatus()
	if err != nil {
		return "", err
	}
	// Requests B and the one on the interrupted file, and A again.
	wantServed := int64(2)
	if restart {
		wantServed++
	}
	requests, errs := now.Requests-before.Requests, now.Errors-before.Errors
	detail := fmt.Sprintf("helper_pid %d, helper_starts %d, requests +%d, errors +%d", now.PID, now.Starts, requests, errs)
	switch {
	case now.PID != before.PID || now.Starts != before.Starts:
		return detail, fmt.Errorf("helper_pid %d and helper_starts %d, want %d and %d: the helper was replaced", now.PID, now.Starts, before.PID, before.Starts)
	case errs < 1:
		return detail, errors.New("the errors counter did not grow, want one error for the interrupted call")
	case requests-errs != wantServed:
		return detail, fmt.Errorf("the module counted %d requests and %d errors, want %d more requests than errors", requests, errs, wantServed)
	}
	return detail, nil
}

// checkSameHelper checks that helper_pid still shows helper pid.
func checkSameHelper(pid int, when string) error {
	now, err := readHelperPID()
	if err != nil {
		return err
	}
	if now != pid {
		return fmt.Errorf("helper_pid is %d %s, want %d: the helper was killed", now, when, pid)
	}
	return nil
}

// sigpipe kills the stopped helper while the module's writer thread is
// blocked writing a 1 MiB request into its full stdin pipe. The write
// then fails with EPIPE in that thread: the caller must get ECONNRESET
// and the guest no SIGPIPE.
func (g *guest) sigpipe() (string, error) {
	st, err := g.loadFresh()
	if err != nil {
		return "", err
	}
	pid := st.PID
	sigpipesBefore := g.sigpipes.Load()
	undo, err := stopHelper(g, pid)
	if err != nil {
		return "", err
	}
	defer undo()
	dev, err := openDevice()
	if err != nil {
		return "", err
	}
	defer dev.Close()

	size := 1 << 20
	frame := proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho, g.newID(), size), g.payloads.next(size))
	done := make(chan error, 1)
	go func() { done <- dev.write(frame) }()
	capacity, err := pipeCapacity(pid, 0)
	if err != nil {
		return "", err
	}
	if err := waitPipeBytes(pid, 0, capacity, g.scale(pipeWait)); err != nil {
		return "", fmt.Errorf("want the module's writer thread blocked on the full pipe: %w", err)
	}

	killed := time.Now()
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		return "", err
	}
	timeout, err := requestTimeout()
	if err != nil {
		return "", err
	}
	var elapsed time.Duration
	select {
	case err := <-done:
		elapsed = time.Since(killed)
		if !errors.Is(err, unix.ECONNRESET) {
			return "", fmt.Errorf("1 MiB request to the killed helper returned %v after %v, want ECONNRESET", err, elapsed.Round(time.Microsecond))
		}
	case <-time.After(timeout + g.scale(latencyMargin)):
		return "", fmt.Errorf("1 MiB request to the killed helper still blocked %v after SIGKILL", timeout+g.scale(latencyMargin))
	}

	records, err := kernelLog()
	if err != nil {
		return "", err
	}
	record, err := checkModuleRecord(records, pid, exitReasons)
	if err != nil {
		return "", err
	}
	if err := g.echoOnce(4096); err != nil {
		return record, fmt.Errorf("new helper: %w", err)
	}
	// A SIGPIPE is delivered before write(2) returns, so one would have
	// reached the handler by now.
	time.Sleep(10 * time.Millisecond)
	detail := fmt.Sprintf("helper %d stopped with %d bytes of a 1 MiB request in its stdin pipe, then killed: ECONNRESET after %v; %s; the new helper replies; SIGPIPE signals to the guest: %d",
		pid, capacity, elapsed.Round(time.Microsecond), record, g.sigpipes.Load()-sigpipesBefore)
	if n := g.sigpipes.Load() - sigpipesBefore; n > 0 {
		return detail, fmt.Errorf("the guest received %d SIGPIPE signals", n)
	}
	dev.Close()
	if _, err := g.unloadChecked(); err != nil {
		return detail, err
	}
	return detail, nil
}

// pipeCapacity returns the capacity of the pipe that is file descriptor
// fd of process pid.
func pipeCapacity(pid, fd int) (int, error) {
	path := fmt.Sprintf("/proc/%d/fd/%d", pid, fd)
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(f)
	n, err := unix.FcntlInt(uintptr(f), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return 0, fmt.Errorf("F_GETPIPE_SZ on %s: %w", path, err)
	}
	return n, nil
}
