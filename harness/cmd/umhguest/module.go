package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	paramDir = "/sys/module/" + moduleName + "/parameters"

	// busyUnloadLimit is the longest a delete_module call may take to
	// fail while the device is open. The kernel checks the module's
	// reference count before calling its exit function, so the call
	// should return within microseconds.
	busyUnloadLimit = 100 * time.Millisecond
)

// helperStatus is a snapshot of the module's counters in sysfs.
type helperStatus struct {
	PID      int
	Starts   int64
	Requests int64
	Errors   int64
}

func readStatus() (helperStatus, error) {
	var s helperStatus
	fields := []struct {
		name string
		dst  *int64
	}{{"helper_starts", &s.Starts}, {"requests", &s.Requests}, {"errors", &s.Errors}}
	pid, err := readHelperPID()
	if err != nil {
		return s, err
	}
	s.PID = pid
	for _, f := range fields {
		if *f.dst, err = readNumber(sysfsDir + "/" + f.name); err != nil {
			return s, err
		}
	}
	return s, nil
}

func moduleLoaded() bool {
	_, err := os.Stat("/sys/module/" + moduleName)
	return err == nil
}

// loadFresh unloads the module if it is loaded, loads it again and checks
// its new helper. It returns the module's status right after the load.
func (g *guest) loadFresh() (helperStatus, error) {
	if moduleLoaded() {
		if _, err := g.unloadChecked(); err != nil {
			if errors.Is(err, unix.EWOULDBLOCK) {
				err = fmt.Errorf("%w: a caller of an earlier step is probably still blocked in the module", err)
			}
			return helperStatus{}, fmt.Errorf("unload the module left loaded by an earlier step: %w", err)
		}
	}
	if _, err := g.load(); err != nil {
		return helperStatus{}, err
	}
	st, err := readStatus()
	if err != nil {
		return st, err
	}
	if _, err := checkHelper(st.PID); err != nil {
		return st, err
	}
	g.pid = st.PID
	g.pids = append(g.pids, st.PID)
	return st, nil
}

// unloadChecked unloads the module, checks that nothing of it is left and
// returns how long delete_module took.
func (g *guest) unloadChecked() (time.Duration, error) {
	pid, err := readHelperPID()
	if err != nil {
		pid = 0 // the status is still checked by checkUnloaded
	}
	elapsed, err := unload()
	if err != nil {
		return elapsed, err
	}
	g.pid = 0
	if _, err := checkUnloaded(pid); err != nil {
		return elapsed, err
	}
	return elapsed, nil
}

// unloadBusy calls delete_module while the caller holds the device open.
// The call must fail within limit with EWOULDBLOCK (EAGAIN), which 6.1
// returns for a module in use, or EBUSY. It returns the errno name and how
// long the call took.
func unloadBusy(limit time.Duration) (string, time.Duration, error) {
	start := time.Now()
	err := unix.DeleteModule(moduleName, 0)
	elapsed := time.Since(start)
	switch {
	case err == nil:
		return "", elapsed, fmt.Errorf("delete_module with the device open succeeded after %v, want EWOULDBLOCK or EBUSY", elapsed.Round(time.Microsecond))
	case !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EBUSY):
		return errnoName(err), elapsed, fmt.Errorf("delete_module with the device open failed with %s after %v, want EWOULDBLOCK or EBUSY", errnoName(err), elapsed.Round(time.Microsecond))
	case elapsed > limit:
		return errnoName(err), elapsed, fmt.Errorf("delete_module with the device open took %v to fail with %s, want under %v", elapsed.Round(time.Microsecond), errnoName(err), limit)
	}
	return errnoName(err), elapsed, nil
}

// setParam writes a module parameter and returns a function that writes
// its old value back. The function ignores a module that was unloaded in
// the meantime, because a new load starts with the default again.
func setParam(name, value string) (restore func() error, err error) {
	path := paramDir + "/" + name
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return nil, fmt.Errorf("set %s to %s: %w", path, value, err)
	}
	return func() error {
		err := os.WriteFile(path, old, 0)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}, nil
}

// requestTimeout returns the module's request_timeout_ms parameter.
func requestTimeout() (time.Duration, error) {
	ms, err := readNumber(paramDir + "/request_timeout_ms")
	return time.Duration(ms) * time.Millisecond, err
}

// processState returns the State letter of /proc/PID/status, or "" when
// the process does not exist.
func processState(pid int) string {
	p, err := readProcess(pid)
	if err != nil {
		return ""
	}
	return p.State
}

// waitThreadsStopped waits up to timeout until every thread of process pid
// is stopped. The leader can show T while another thread, woken from a
// pipe read by the stop signal, still runs: if data arrived meanwhile, it
// reads some before it stops.
func waitThreadsStopped(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		running, err := runningThreads(pid)
		if err != nil {
			return err
		}
		if len(running) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("threads %v of process %d are not stopped %v after SIGSTOP", running, pid, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// runningThreads returns the thread ids of process pid whose state is not
// T (stopped).
func runningThreads(pid int) ([]string, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var running []string
	for _, task := range tasks {
		status, err := os.ReadFile(filepath.Join(dir, task.Name(), "status"))
		if err != nil {
			return nil, err
		}
		if !strings.Contains(string(status), "\nState:\tT") {
			running = append(running, task.Name())
		}
	}
	return running, nil
}

// findKernelThreads returns the pids of kernel threads whose name starts
// with prefix. The module names its reader and writer threads
// umhblob-rd/PID and umhblob-wr/PID.
func findKernelThreads(prefix string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil {
			continue
		}
		if strings.HasPrefix(string(comm), prefix) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// pipeBytes returns the number of unread bytes in the pipe that is file
// descriptor fd of process pid. It opens the pipe again for reading
// through /proc, which adds a reader but reads nothing.
func pipeBytes(pid, fd int) (int, error) {
	path := fmt.Sprintf("/proc/%d/fd/%d", pid, fd)
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(f)
	n, err := unix.IoctlGetInt(f, unix.TIOCINQ) // FIONREAD; x/sys names it TIOCINQ
	if err != nil {
		return 0, fmt.Errorf("FIONREAD on %s: %w", path, err)
	}
	return n, nil
}

// waitPipeBytes waits up to timeout until the pipe that is file descriptor
// fd of process pid holds want unread bytes.
func waitPipeBytes(pid, fd, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := pipeBytes(pid, fd)
		if err != nil {
			return err
		}
		if n == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pipe on fd %d of process %d contains %d unread bytes after %v, want %d", fd, pid, n, timeout, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// threadPrefix starts the names of the module's kernel threads.
const threadPrefix = "umhblob-"

// waitNoThreads waits up to timeout until no kernel thread of the module
// is left. kthread_stop returns when the thread function has returned, a
// moment before kthreadd releases the thread, so one can still be in
// /proc right after rmmod.
func waitNoThreads(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		left, err := findKernelThreads(threadPrefix)
		if err != nil || len(left) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kernel threads %s* left %v after rmmod: %v", threadPrefix, timeout, left)
		}
		time.Sleep(time.Millisecond)
	}
}
