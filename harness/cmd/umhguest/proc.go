package main

import (
	"bytes"
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
	moduleName = "umhblob"
	helperName = "umhblob_helper" // argv[0] the module gives its helper
	sysfsDir   = "/sys/class/misc/umhblob"
	kthreadd   = 2
)

// process is a snapshot of /proc/PID/cmdline and /proc/PID/status.
type process struct {
	PID   int
	Argv0 string
	PPID  int
	State string // the State letter from /proc/PID/status, such as S or Z
}

// readProcess reads /proc/PID. The error wraps os.ErrNotExist when the
// process does not exist.
func readProcess(pid int) (process, error) {
	p := process{PID: pid}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return p, err
	}
	p.Argv0, _, _ = strings.Cut(string(cmdline), "\x00")
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return p, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		key, value, _ := strings.Cut(line, ":")
		value = strings.TrimSpace(value)
		switch key {
		case "State":
			p.State, _, _ = strings.Cut(value, " ")
		case "PPid":
			if p.PPID, err = strconv.Atoi(value); err != nil {
				return p, fmt.Errorf("parse PPid in %s/status: %w", dir, err)
			}
		}
	}
	return p, nil
}

// checkHelper checks that pid is a live helper process started by the
// kernel: argv[0] is helperName, its parent is kthreadd, and it is not a
// zombie.
func checkHelper(pid int) (process, error) {
	if pid <= 0 {
		return process{}, fmt.Errorf("helper_pid is %d, want a process id", pid)
	}
	p, err := readProcess(pid)
	if err != nil {
		return p, fmt.Errorf("read helper process %d: %w", pid, err)
	}
	if p.Argv0 != helperName {
		return p, fmt.Errorf("process %d has argv[0] %q, want %q", pid, p.Argv0, helperName)
	}
	if p.PPID != kthreadd {
		return p, fmt.Errorf("helper %d has parent %d, want kthreadd (%d)", pid, p.PPID, kthreadd)
	}
	if p.State == "Z" || p.State == "X" {
		return p, fmt.Errorf("helper %d is in state %s, want a live process", pid, p.State)
	}
	return p, nil
}

// waitGone waits up to timeout for /proc/PID to disappear. It returns
// how long that took and, when the process was still there at the first
// check, the state it was in then. A helper that the kernel has already
// reaped can stay visible for a moment, because the exit wakes the module
// before the kernel releases the pid.
func waitGone(pid int, timeout time.Duration) (time.Duration, string, error) {
	start := time.Now()
	firstState := ""
	for {
		p, err := readProcess(pid)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return time.Since(start), firstState, nil
		}
		if firstState == "" {
			firstState = p.State
		}
		if time.Since(start) > timeout {
			return time.Since(start), firstState, fmt.Errorf("helper %d still exists %v after rmmod: argv[0] %q, state %s, parent %d",
				pid, timeout, p.Argv0, p.State, p.PPID)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// findByArgv0 returns the pids of all processes whose argv[0] is name.
// Kernel threads have an empty cmdline and never match.
func findByArgv0(name string) ([]int, error) {
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
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // the process exited while we looked
		}
		if argv0, _, _ := bytes.Cut(cmdline, []byte{0}); string(argv0) == name {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// readNumber reads a file that contains one decimal number.
func readNumber(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}

func readHelperPID() (int, error) {
	n, err := readNumber(filepath.Join(sysfsDir, "helper_pid"))
	return int(n), err
}

// meminfoKiB returns a field of /proc/meminfo, such as Shmem, in KiB.
func meminfoKiB(field string) (int64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		number, _ := strings.CutSuffix(strings.TrimSpace(value), " kB")
		n, err := strconv.ParseInt(number, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s in /proc/meminfo: %w", field, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("find %s in /proc/meminfo: not found", field)
}

// kernelLog returns the kernel log records that are still in the ring
// buffer, one per element, without the <level> prefix and with the
// timestamp "[    1.234567] " turned into "1.234567 ". The host takes a
// bracketed timestamp inside a report line for a kernel message that the
// console printed into it.
func kernelLog() ([]string, error) {
	size, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil {
		return nil, fmt.Errorf("get kernel log size: %w", err)
	}
	buf := make([]byte, size)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return nil, fmt.Errorf("read kernel log: %w", err)
	}
	var records []string
	for line := range strings.SplitSeq(strings.TrimRight(string(buf[:n]), "\n"), "\n") {
		if i := strings.IndexByte(line, '>'); strings.HasPrefix(line, "<") && i > 0 {
			line = line[i+1:]
		}
		if stamp, text, ok := strings.Cut(line, "] "); ok && strings.HasPrefix(stamp, "[") {
			line = strings.TrimSpace(stamp[1:]) + " " + text
		}
		records = append(records, line)
	}
	return records, nil
}

// kernelRelease returns the running kernel's release, as uname -r prints it.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
