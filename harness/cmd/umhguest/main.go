// Command umhguest is the u-root uinit of the umhblob test VM. It loads
// the module, checks its helper and device, unloads it, prints one report
// line per step on the console (see package harness/report), prints
// "UMHBLOB RESULT PASS" or "UMHBLOB RESULT FAIL", and restarts the machine
// so that QEMU, started with -no-reboot, exits.
//
// Flags:
//
//	-module   path of the module inside the guest (default /umhblob.ko)
//	-demo     also print a readable transcript of every step (the kernel
//	          command line parameter umhguest.mode=demo sets it too)
//	-console  terminal for the report lines (default /dev/console, and
//	          "" means stdout)
//	-reboot   restart the machine at the end (default true)
//	-oom-hog  run as the memory hog of the OOM fault step, which starts
//	          umhguest again with this flag. The hog allocates memory
//	          until the process with this pid is gone, then waits to be
//	          killed.
//
// The report goes to /dev/console rather than stdout because u-root's init
// connects stdout to a pipe that it copies to the consoles: lines still in
// that pipe when the machine restarts are lost.
//
// The kernel command line parameter is named umhguest.mode rather than
// umhblob.mode because the kernel reserves "<module>.<param>" for the
// parameters of a module, and modprobe would pass umhblob.mode to it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, errFailed) {
			fmt.Fprintf(os.Stderr, "umhguest: %v\n", err)
		}
		os.Exit(1)
	}
}

// errFailed is returned when a step failed. The report lines name the step.
var errFailed = errors.New("guest steps failed")

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("umhguest", flag.ContinueOnError)
	fs.SetOutput(stdout)
	module := fs.String("module", "/umhblob.ko", "`path` of the module to load")
	demo := fs.Bool("demo", false, "print a readable transcript of every step")
	console := fs.String("console", "/dev/console", "terminal `path` for the report lines; empty means stdout")
	reboot := fs.Bool("reboot", true, "restart the machine when done")
	hogPID := fs.Int("oom-hog", 0, "run as the memory hog of the OOM fault step until process `pid` is gone")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *hogPID != 0 {
		return runHog(*hogPID, stdout)
	}
	if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil && slices.Contains(strings.Fields(string(cmdline)), "umhguest.mode=demo") {
		*demo = true
	}
	out := stdout
	if *console != "" {
		f, err := openConsole(*console)
		if err != nil {
			return err
		}
		defer f.Close()
		out = f
	}

	g := &guest{out: out, modulePath: *module, demo: *demo, payloads: newPayloadSource()}
	passed := g.run()
	if *reboot {
		restart(out)
	}
	if !passed {
		return errFailed
	}
	return nil
}

// drain waits until a terminal has sent all output written to it, like
// tcdrain(3). It does nothing for other writers and ignores errors such as
// ENOTTY.
func drain(w io.Writer) {
	if f, ok := w.(*os.File); ok {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1)
	}
}

// openConsole opens a terminal for writing with a blocking descriptor, so
// that each report line is one complete write(2). os.OpenFile would make
// the descriptor non-blocking.
func openConsole(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open console %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// restart waits until the console has sent everything written so far and
// restarts the machine. It returns only if the restart fails.
func restart(console io.Writer) {
	// Without it the last lines can still be in the UART buffer when
	// the machine restarts.
	drain(console)
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	fmt.Fprintf(console, "umhguest: restart: %v\n", err)
}
