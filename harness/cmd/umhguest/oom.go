package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

const (
	hogChunk    = 4 << 20 // bytes the memory hog maps and touches at a time
	oomAttempts = 3       // memory hogs started before the OOM fault gives up
	// oomWait bounds the wait for one hog to get the helper killed. A
	// hog filled 512 MiB in 3 to 5 s, and 1 GiB on the debug kernel
	// (KASAN, TCG) in about 70 s.
	oomWait = 120 * time.Second
)

// runHog is the -oom-hog mode of umhguest: a child process that maps and
// touches memory until process pid is gone, so that the OOM killer runs,
// and then waits to be killed. It stops allocating then, to keep further
// OOM kills few, but the OOM killer often kills the hog too before the
// OOM step does.
func runHog(pid int, out io.Writer) error {
	// A child inherits the guest's -1000, which would make the hog the
	// one process the OOM killer cannot pick.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("0"), 0); err != nil {
		return err
	}
	total := 0
	for !processGone(pid) {
		chunk, err := unix.Mmap(-1, 0, hogChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("map memory after %d MiB: %w", total>>20, err)
		}
		// MAP_POPULATE gives up silently when memory is short.
		for i := 0; i < len(chunk); i += os.Getpagesize() {
			chunk[i] = 1
		}
		total += hogChunk
	}
	fmt.Fprintf(out, "process %d gone after %d MiB\n", pid, total>>20)
	for {
		unix.Pause()
	}
}

// processGone reports whether process pid has exited.
func processGone(pid int) bool {
	state := processState(pid)
	return state == "" || state == "Z" || state == "X"
}

// hog is a running memory hog child.
type hog struct {
	cmd    *exec.Cmd
	output bytes.Buffer // read only after done is closed
	done   chan struct{}
	err    error // the exit error, set before done is closed
}

// startHog starts umhguest again in -oom-hog mode. u-root builds every
// command into one busybox binary, which runs the command that argv[0]
// names.
func startHog(pid int) (*hog, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	h := &hog{done: make(chan struct{})}
	h.cmd = &exec.Cmd{Path: exe, Args: []string{"umhguest", "-oom-hog", strconv.Itoa(pid)}, Stdout: &h.output, Stderr: &h.output}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start memory hog: %w", err)
	}
	go func() {
		h.err = h.cmd.Wait()
		close(h.done)
	}()
	return h, nil
}

// kill kills the hog and waits for it.
func (h *hog) kill() {
	h.cmd.Process.Kill()
	<-h.done
}

// protectGuest sets the guest's oom_score_adj to -1000, so that the OOM
// killer never picks it. The setting is kept for the rest of the run.
func protectGuest() error {
	return os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0)
}

// injectOOM makes helper pid the OOM killer's first choice with
// oom_score_adj 1000 and starts a memory hog. It returns once the helper
// is gone and the kernel log shows that the OOM killer killed it, and
// tries again with a new hog when the OOM killer picked the hog. The
// undo function kills the hog.
func injectOOM(g *guest, pid int) (func(), error) {
	if err := protectGuest(); err != nil {
		return nil, err
	}
	adj := fmt.Sprintf("/proc/%d/oom_score_adj", pid)
	if err := os.WriteFile(adj, []byte("1000"), 0); err != nil {
		return nil, fmt.Errorf("set %s to 1000: %w", adj, err)
	}
	for attempt := 1; attempt <= oomAttempts; attempt++ {
		h, err := startHog(pid)
		if err != nil {
			return nil, err
		}
		hogExit, err := waitHelperOrHog(pid, h, g.scale(oomWait))
		if err != nil {
			h.kill()
			return nil, err
		}
		records, err := kernelLog()
		if err != nil {
			h.kill()
			return nil, err
		}
		if _, ok := findRecord(records, oomRecord(pid)); ok {
			return h.kill, nil
		}
		if hogExit != "" && !processGone(pid) {
			g.info("OOM attempt %d: the OOM killer picked memory hog %d (%s, output %q) instead of helper %d; trying again",
				attempt, h.cmd.Process.Pid, hogExit, h.output.String(), pid)
			continue
		}
		h.kill()
		return nil, fmt.Errorf("helper %d is gone but no kernel log record %q", pid, oomRecord(pid))
	}
	return nil, fmt.Errorf("the OOM killer picked the memory hog instead of helper %d in %d attempts", pid, oomAttempts)
}

// waitHelperOrHog waits up to timeout until helper pid is gone or the hog
// has exited. It returns the hog's exit status in the second case and ""
// in the first.
func waitHelperOrHog(pid int, h *hog, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for !processGone(pid) {
		select {
		case <-h.done:
			if h.err == nil {
				return "exit status 0", nil
			}
			return h.err.Error(), nil
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("helper %d still alive %v after the memory hog started", pid, timeout)
		}
	}
	return "", nil
}

func oomRecord(pid int) string {
	return fmt.Sprintf("Killed process %d (%s)", pid, helperName)
}

// oomKillDelay returns the time from the OOM killer's record for helper
// pid to the module's record for it, both on the kernel log's clock.
func oomKillDelay(records []string, pid int) (time.Duration, error) {
	killed, ok := findRecord(records, oomRecord(pid))
	if !ok {
		return 0, fmt.Errorf("no kernel log record %q", oomRecord(pid))
	}
	prefix := fmt.Sprintf("%s: helper %d ", moduleName, pid)
	noticed, ok := findRecord(records, prefix, "killing it")
	if !ok {
		return 0, fmt.Errorf("no kernel log record %q...\"killing it\" for the OOM-killed helper", prefix)
	}
	t1, err := recordTime(killed)
	if err != nil {
		return 0, err
	}
	t2, err := recordTime(noticed)
	if err != nil {
		return 0, err
	}
	return t2 - t1, nil
}

// verifyOOM returns the OOM killer's record for helper pid.
func verifyOOM(records []string, pid int) (string, error) {
	record, ok := findRecord(records, oomRecord(pid))
	if !ok {
		return "", fmt.Errorf("no kernel log record %q", oomRecord(pid))
	}
	return "kernel: " + recordText(record), nil
}
