// Command vm boots the umhblob kernel in QEMU with a shell on the serial
// console, for trying the module by hand or debugging it with gdb.
//
// The guest runs u-root's init and the gosh shell with u-root's core
// commands (insmod, rmmod, lsmod, dmesg, ps, cat, ls, strace, ...) and
// umhctl. The module is at /umhblob.ko and is not loaded:
//
//	insmod /umhblob.ko
//	cat /sys/class/misc/umhblob/helper_pid
//	umhctl ping
//	rmmod umhblob
//
// Without -gdb the console is this terminal; Ctrl-A X quits QEMU and
// Ctrl-A H lists QEMU's other console keys. poweroff or a kernel panic
// also ends the run.
//
// With -gdb the guest starts halted, with QEMU's gdb stub on 127.0.0.1,
// and gdb runs on this terminal. Its script boots the guest to
// kernel_init, runs lx-symbols so that the module's symbols load when the
// module loads, and stops at the gdb prompt. The console is then on a
// Unix socket; attach to it from a second terminal with the command this
// program prints (go run ./harness/cmd/vm -attach <socket>). Quitting gdb
// stops QEMU.
//
// Flags:
//
//	-kernel     bzImage to boot (default $UMHBLOB_KERNEL, or
//	            arch/x86/boot/bzImage in -kdir)
//	-module     umhblob.ko to put at /umhblob.ko (default $UMHBLOB_MODULE)
//	-gdb        start halted with a gdb stub and run gdb
//	-kdir       kernel build directory; -gdb loads its vmlinux and
//	            vmlinux-gdb.py (default $KDIR, or for -gdb the directory
//	            that holds -kernel as arch/x86/boot/bzImage)
//	-gdb-port   gdb stub port on 127.0.0.1 (default $UMHBLOB_GDB_PORT,
//	            or a free port)
//	-attach     connect this terminal to a console socket; Ctrl-]
//	            detaches and leaves the guest running
//	-accel      QEMU accelerator: auto, kvm or tcg (default $UMHBLOB_ACCEL,
//	            or auto)
//
// Package harness/vm lists the other environment variables it reads,
// such as UMHBLOB_VM_MEMORY and UMHBLOB_QEMU.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/term"

	"github.com/umhblob/umhblob/harness/vm"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "vm: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("vm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kernel := fs.String("kernel", os.Getenv("UMHBLOB_KERNEL"), "bzImage `path` to boot")
	module := fs.String("module", os.Getenv("UMHBLOB_MODULE"), "umhblob.ko `path` to put at /umhblob.ko in the guest")
	gdb := fs.Bool("gdb", false, "start the guest halted with a gdb stub and run gdb")
	kdir := fs.String("kdir", os.Getenv("KDIR"), "kernel build `directory`: the default for -kernel is its bzImage, and -gdb loads its vmlinux and vmlinux-gdb.py")
	port := fs.Int("gdb-port", 0, "gdb stub `port` on 127.0.0.1 (default $UMHBLOB_GDB_PORT, or a free port)")
	attach := fs.String("attach", "", "connect this terminal to the console `socket` of a -gdb run")
	accel := fs.String("accel", "", "QEMU accelerator: auto, kvm or tcg (default $UMHBLOB_ACCEL, or auto)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *attach != "" {
		return attachConsole(*attach, os.Stdin, os.Stdout, stderr)
	}
	if *kernel == "" && *kdir != "" {
		*kernel = filepath.Join(*kdir, "arch/x86/boot/bzImage")
	}
	if *kernel == "" {
		return errors.New("no kernel: set -kernel or UMHBLOB_KERNEL to a bzImage, or -kdir to its build directory (go run ./harness/cmd/kernel prints one)")
	}

	cfg := vm.Config{Kernel: *kernel, Module: *module, Accel: *accel, Progress: stderr}
	if !*gdb {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		fmt.Fprintln(stderr, "vm: the module is at /umhblob.ko, not loaded; Ctrl-A X quits QEMU")
		return vm.Shell(ctx, cfg, vm.ShellOptions{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	}

	if *kdir == "" {
		// make puts the image at <KDIR>/arch/x86/boot/bzImage.
		*kdir = filepath.Clean(filepath.Join(filepath.Dir(*kernel), "..", "..", ".."))
	}
	if *port == 0 {
		if s := os.Getenv("UMHBLOB_GDB_PORT"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 || n > 65535 {
				return fmt.Errorf("invalid UMHBLOB_GDB_PORT %q: want a TCP port number", s)
			}
			*port = n
		}
	}
	// Ctrl-C belongs to gdb, which stops the guest with it. This
	// process and QEMU, in its own process group, must survive it.
	signal.Ignore(os.Interrupt)
	session, err := vm.StartGDB(context.Background(), cfg, vm.GDBOptions{
		KDIR:   *kdir,
		Port:   *port,
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		OnReady: func(s *vm.GDBSession) {
			fmt.Fprintf(stderr, "vm: attach to the guest console from another terminal with:\n    %s -attach %s\n", attachCommand(), s.Console)
		},
	})
	if err != nil {
		return err
	}
	return session.Wait()
}

// attachCommand returns how to run this program again. go run builds it
// into a temporary directory that is removed when it exits, so for go run
// that is go run again.
func attachCommand() string {
	self, err := os.Executable()
	if err != nil || filepath.Base(filepath.Dir(self)) == "exe" {
		return "go run ./harness/cmd/vm"
	}
	return self
}

// detachKey is Ctrl-], which telnet also uses to leave a session.
const detachKey = 0x1d

// attachConsole copies between the terminal and the console socket until
// either side closes or the user presses Ctrl-].
func attachConsole(socket string, in *os.File, out io.Writer, stderr io.Writer) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return fmt.Errorf("attach to console: %w", err)
	}
	defer conn.Close()
	if term.IsTerminal(int(in.Fd())) {
		old, err := term.MakeRaw(int(in.Fd()))
		if err != nil {
			return fmt.Errorf("attach to console: %w", err)
		}
		defer term.Restore(int(in.Fd()), old)
	}
	fmt.Fprintf(stderr, "vm: attached to %s; Ctrl-] detaches\r\n", socket)

	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(out, conn)
		done <- err
	}()
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := in.Read(buf)
			for i := 0; i < n; i++ {
				if buf[i] == detachKey {
					conn.Write(buf[:i])
					done <- nil
					return
				}
			}
			if _, werr := conn.Write(buf[:n]); werr != nil {
				done <- werr
				return
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	err = <-done
	fmt.Fprint(stderr, "\r\nvm: detached\r\n")
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
