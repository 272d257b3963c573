package usermode

import (
	"fmt"
	"syscall"
)

// exitMeanings are the exit statuses that helper/main.go documents.
var exitMeanings = map[int]string{
	0: "end of file on its stdin",
	1: "writing a reply failed",
	2: "a malformed frame or a read error on its stdin",
}

// ExitError describes how the helper process ended. Wait and Close return
// one only when the helper did not exit with status 0, and a HelperError
// always holds one.
type ExitError struct {
	PID    int
	Status syscall.WaitStatus
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("helper %d %s", e.PID, e.describe())
}

// ExitCode returns the exit status, or -1 when a signal ended the helper.
func (e *ExitError) ExitCode() int {
	if !e.Status.Exited() {
		return -1
	}
	return e.Status.ExitStatus()
}

func (e *ExitError) describe() string {
	switch {
	case e.Status.Exited():
		code := e.Status.ExitStatus()
		if meaning, ok := exitMeanings[code]; ok {
			return fmt.Sprintf("exited with status %d (%s)", code, meaning)
		}
		return fmt.Sprintf("exited with status %d", code)
	case e.Status.Signaled():
		sig := e.Status.Signal()
		msg := fmt.Sprintf("was killed by signal %d (%v)", int(sig), sig)
		if e.Status.CoreDump() {
			msg += ", core dumped"
		}
		return msg
	default:
		return fmt.Sprintf("ended with wait status %#x", uint32(e.Status))
	}
}

// HelperError reports that the helper can serve no more requests. It is
// returned to every request that was in flight, or sent later, and it
// wraps syscall.ECONNRESET, the errno the module returns to callers when
// its helper fails.
type HelperError struct {
	PID int
	// Err is the cause of the failure: end of file on the helper's
	// stdout, a reply that breaks the protocol, a failed write or a
	// timeout.
	Err error
	// Exit is the helper's exit status, or the signal that ended it.
	Exit *ExitError
}

func (e *HelperError) Error() string {
	return fmt.Sprintf("helper %d failed: %v; it %s", e.PID, e.Err, e.Exit.describe())
}

func (e *HelperError) Unwrap() []error {
	return []error{e.Err, e.Exit, syscall.ECONNRESET}
}
