package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// GDBOptions configures StartGDB.
type GDBOptions struct {
	// KDIR is the kernel build directory of cfg.Kernel. It must contain
	// vmlinux with debug information and vmlinux-gdb.py, which a kernel
	// built with CONFIG_DEBUG_INFO=y and CONFIG_GDB_SCRIPTS=y has
	// (kernel-config/gdb.config).
	KDIR string
	// Port is the gdb stub's TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// RunDir receives the console socket, the console log and the gdb
	// script; "" creates a directory under os.TempDir().
	RunDir string
	// Commands are gdb commands run after the generated script, for
	// example a breakpoint and continue for a batch run.
	Commands []string
	// Batch runs gdb with -batch, so it exits after the commands.
	Batch bool
	// Stdin, Stdout and Stderr are gdb's.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// OnReady, if not nil, is called once QEMU listens on the stub port
	// and the console socket, before gdb starts.
	OnReady func(s *GDBSession)
}

// GDBSession is a halted VM with a gdb stub and the gdb attached to it.
type GDBSession struct {
	Port       int    // gdb stub port on 127.0.0.1
	Console    string // Unix socket of the guest's serial console
	ConsoleLog string // everything the serial console printed
	Script     string // gdb script that connects and loads the symbols
	QEMUArgs   []string

	qemu     *exec.Cmd
	qemuDone chan struct{} // closed when QEMU has exited
	qemuErr  error         // QEMU's exit error, set before qemuDone is closed
	gdb      *exec.Cmd
}

// StartGDB builds the shell initramfs and starts QEMU halted before the
// first instruction, with a gdb stub on 127.0.0.1 and the serial console
// on a Unix socket. It then starts gdb with a script that connects, boots
// the guest to kernel_init and runs lx-symbols, so that module symbols
// load when a module loads. Wait waits for gdb and then stops QEMU.
//
// The guest runs gosh on the console, with the module at /umhblob.ko
// and not loaded. The kernel command line has nokaslr, so vmlinux's
// addresses hold even for kernels built with RANDOMIZE_BASE, and no
// panic=-1, so a panicking guest stays up to be inspected.
func StartGDB(ctx context.Context, cfg Config, opts GDBOptions) (*GDBSession, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := checkGDBKernel(opts.KDIR); err != nil {
		return nil, err
	}
	gdbPath, err := exec.LookPath("gdb")
	if err != nil {
		return nil, errNoGDB
	}
	initrd, err := ShellInitramfs(ctx, cfg.Module, cfg.CacheDir, cfg.Progress)
	if err != nil {
		return nil, err
	}
	accel, why, err := chooseAccel(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	cfg.Accel = accel
	fmt.Fprintf(cfg.Progress, "vm: accelerator %s (%s)\n", accel, why)

	s := &GDBSession{Port: opts.Port}
	if err := s.prepare(opts); err != nil {
		return nil, err
	}
	moduleDir := ""
	if cfg.Module != "" {
		moduleDir = filepath.Dir(cfg.Module)
	}
	script := gdbScript(opts.KDIR, moduleDir, s.Port)
	if err := os.WriteFile(s.Script, []byte(script), 0o644); err != nil {
		return nil, err
	}

	if err := s.startQEMU(cfg, initrd); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Progress, "vm: %s\n", shellQuote(s.QEMUArgs))
	fmt.Fprintf(cfg.Progress, "vm: guest halted; gdb stub on 127.0.0.1:%d, serial console on %s (log %s)\n", s.Port, s.Console, s.ConsoleLog)
	if opts.OnReady != nil {
		opts.OnReady(s)
	}

	gdbArgs := []string{"-q"}
	if opts.Batch {
		// A batch run must not depend on the user's ~/.gdbinit.
		gdbArgs = append(gdbArgs, "-nx", "-batch")
	}
	gdbArgs = append(gdbArgs, "-x", s.Script)
	for _, c := range opts.Commands {
		gdbArgs = append(gdbArgs, "-ex", c)
	}
	s.gdb = exec.Command(gdbPath, gdbArgs...)
	s.gdb.Stdin, s.gdb.Stdout, s.gdb.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	fmt.Fprintf(cfg.Progress, "vm: %s\n", shellQuote(s.gdb.Args))
	if err := s.gdb.Start(); err != nil {
		s.stopQEMU()
		return nil, fmt.Errorf("start gdb: %w", err)
	}
	return s, nil
}

// checkGDBKernel fails when kdir lacks what the gdb script loads.
func checkGDBKernel(kdir string) error {
	if kdir == "" {
		return errors.New("no kernel build directory for gdb: set KDIR to the build of the booted kernel")
	}
	for _, name := range []string{"vmlinux", "vmlinux-gdb.py"} {
		if _, err := os.Stat(filepath.Join(kdir, name)); err != nil {
			return fmt.Errorf("%s has no %s: build the kernel with CONFIG_DEBUG_INFO=y and CONFIG_GDB_SCRIPTS=y (go run ./harness/cmd/kernel -variant gdb): %w", kdir, name, err)
		}
	}
	return nil
}

// prepare creates the run directory and picks the stub port.
func (s *GDBSession) prepare(opts GDBOptions) error {
	dir := opts.RunDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "umhblob-gdb-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	s.Console = filepath.Join(dir, "console.sock")
	s.ConsoleLog = filepath.Join(dir, "console.log")
	s.Script = filepath.Join(dir, "umhblob.gdb")
	os.Remove(s.Console)
	if s.Port == 0 {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("pick a gdb stub port: %w", err)
		}
		s.Port = port
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startQEMU starts QEMU in its own process group, so that Ctrl-C in gdb,
// which the terminal sends to the whole foreground group, stops the guest
// through gdb instead of killing QEMU.
func (s *GDBSession) startQEMU(cfg Config, initrd string) error {
	kernelArgs := append([]string{"console=ttyS0", "nokaslr"}, cfg.KernelArgs...)
	s.QEMUArgs = append(cfg.shellArgs(initrd, kernelArgs),
		"-S", "-gdb", "tcp:127.0.0.1:"+strconv.Itoa(s.Port),
		"-display", "none", "-monitor", "none",
		"-chardev", "socket,id=console,path="+s.Console+",server=on,wait=off,logfile="+s.ConsoleLog,
		"-serial", "chardev:console",
	)
	s.qemu = exec.Command(s.QEMUArgs[0], s.QEMUArgs[1:]...)
	s.qemu.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr strings.Builder
	s.qemu.Stderr = &stderr
	if err := s.qemu.Start(); err != nil {
		return fmt.Errorf("start QEMU: %w", err)
	}
	s.qemuDone = make(chan struct{})
	go func() {
		s.qemuErr = s.qemu.Wait()
		close(s.qemuDone)
	}()

	// QEMU listens on the console socket and the stub port before it
	// runs the guest; wait for both so gdb can connect at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), time.Second)
		if err == nil {
			conn.Close()
			if _, err := os.Stat(s.Console); err == nil {
				return nil
			}
		}
		select {
		case <-s.qemuDone:
			return fmt.Errorf("QEMU exited at start (%s): %s", exitStatus(s.qemuErr), strings.TrimSpace(stderr.String()))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopQEMU()
			return fmt.Errorf("QEMU did not open the gdb stub on port %d within 10s", s.Port)
		}
	}
}

// Wait waits for gdb to exit and then stops QEMU. It returns gdb's error.
func (s *GDBSession) Wait() error {
	err := s.gdb.Wait()
	s.stopQEMU()
	if err != nil {
		return fmt.Errorf("gdb: %w", err)
	}
	return nil
}

// Stop kills gdb and QEMU.
func (s *GDBSession) Stop() {
	if s.gdb != nil && s.gdb.Process != nil {
		s.gdb.Process.Kill()
	}
	s.stopQEMU()
}

func (s *GDBSession) stopQEMU() {
	if s.qemu == nil || s.qemu.Process == nil {
		return
	}
	select {
	case <-s.qemuDone:
		return
	default:
	}
	s.qemu.Process.Kill()
	<-s.qemuDone
}

// gdbScript returns the gdb commands that load vmlinux and the kernel's
// gdb scripts from kdir, connect to the stub on port, run the guest to
// kernel_init and run lx-symbols on moduleDir.
//
// The stop at kernel_init is a hardware breakpoint because the kernel's
// virtual addresses are not mapped yet when the guest is halted at reset,
// so gdb cannot write a software breakpoint there. lx-symbols needs the
// kernel's module list, which is readable from that point on, and it
// leaves a breakpoint in do_init_module that loads each module's symbols
// when the module loads.
func gdbScript(kdir, moduleDir string, port int) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("set pagination off")
	w("set confirm off")
	w("add-auto-load-safe-path %s", kdir)
	w("file %s", filepath.Join(kdir, "vmlinux"))
	w("target remote 127.0.0.1:%d", port)
	w("hbreak kernel_init")
	w("continue")
	w("delete")
	if moduleDir != "" {
		w("lx-symbols %s", moduleDir)
	} else {
		w("lx-symbols")
	}
	w("set breakpoint pending on")
	w(`echo \n`)
	w(`echo umhblob: the guest is stopped in kernel_init. Module symbols load when a module loads.\n`)
	w(`echo umhblob: set breakpoints now (break umhb_write), then continue, and in the guest console\n`)
	w(`echo umhblob: run insmod /umhblob.ko and umhctl ping. Ctrl-C in gdb stops the guest again.\n`)
	return b.String()
}
