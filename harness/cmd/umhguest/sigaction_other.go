//go:build !amd64

package main

import (
	"errors"

	"golang.org/x/sys/unix"
)

// clearSARestart is implemented only for x86-64, the guest's architecture,
// because the layout of the kernel's struct sigaction differs by
// architecture.
func clearSARestart(sig unix.Signal) (restore func(), err error) {
	return nil, errors.ErrUnsupported
}
