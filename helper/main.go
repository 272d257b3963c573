// Command umhblob_helper is the user mode helper that the umhblob module
// embeds and starts with fork_usermode_driver. It reads request frames
// from stdin, serves them, and writes one reply frame per request to
// stdout. Both are pipes to the module, so they carry the protocol and
// nothing else. Log records go to the kernel log through /dev/kmsg.
//
// Exit status:
//
//	0  stdin reached end of file between frames
//	1  writing a reply failed, usually EPIPE after the module closed its end
//	2  a malformed frame or a read error on stdin
package main

import (
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/umhblob/umhblob/proto"
)

func main() {
	// Without this, the Go runtime kills the process with SIGPIPE when a
	// write to fd 1 fails with EPIPE. Ignored, the write returns EPIPE and
	// the helper logs it and exits 1.
	signal.Ignore(syscall.SIGPIPE)

	log := openKmsg()
	log.Infof("started, protocol %d", proto.Version)

	err := run(os.Stdin, os.Stdout, log)
	code := exitCode(err)
	if err != nil {
		log.Errorf("exiting with status %d: %v", code, err)
	} else {
		log.Infof("exiting: end of file on stdin")
	}
	os.Exit(code)
}

// exitCode returns the exit status for the error that run returned.
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errWriteReply):
		return 1
	default:
		return 2
	}
}
