package main

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is struct sigaction as the x86-64 rt_sigaction system
// call takes it, which differs from the C library's.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// saRestart is SA_RESTART in asm-generic/signal-defs.h.
const saRestart = 0x10000000

// clearSARestart removes SA_RESTART from the handler that the Go runtime
// installed for sig, so that a system call that sig interrupts fails with
// EINTR instead of being restarted. The Go runtime installs every handler
// with SA_RESTART. It returns a function that restores the old action.
func clearSARestart(sig unix.Signal) (restore func(), err error) {
	var old kernelSigaction
	if err := rtSigaction(sig, nil, &old); err != nil {
		return nil, err
	}
	act := old
	act.flags &^= saRestart
	if err := rtSigaction(sig, &act, nil); err != nil {
		return nil, err
	}
	return func() { rtSigaction(sig, &old, nil) }, nil
}

func rtSigaction(sig unix.Signal, act, old *kernelSigaction) error {
	const sigsetSize = 8 // the kernel's sigset_t, 64 signals
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig),
		uintptr(unsafe.Pointer(act)), uintptr(unsafe.Pointer(old)), sigsetSize, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
