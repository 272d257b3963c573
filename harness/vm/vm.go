// Package vm boots the umhblob test guest in QEMU and decides whether it
// passed.
//
// Run builds (or takes from the cache) a u-root initramfs holding u-root's
// init, the guest program harness/cmd/umhguest as its uinit, and the
// module at /umhblob.ko. It boots QEMU with
//
//	-m 512 -smp 2 -accel tcg|kvm -no-reboot -nic none -nographic
//	-append "console=ttyS0 panic=-1 oops=panic panic_on_warn=1"
//
// and reads the serial console line by line. A run passes only when the
// guest prints "UMHBLOB RESULT PASS" after a passing line for every step
// and QEMU then exits by itself. QEMU's exit status alone proves nothing:
// with panic=-1 and -no-reboot a kernel panic also exits with status 0.
//
// The accelerator is auto by default: a short probe boots the kernel
// under KVM without an initramfs, and the run uses KVM only if that guest
// finished booting within the probe's bound (see DefaultKVMProbeTimeout).
// Nested KVM that hangs a guest, a missing /dev/kvm or one without access
// rights all lead to TCG.
//
// A run fails as soon as the console shows a kernel panic, oops, BUG,
// WARNING or stall, a report from a debug kernel (KASAN, lockdep,
// sleeping in atomic context, a hung task, kmemleak), or the guest
// program crashes. QEMU is killed a few seconds later if it has not
// exited by then. A run also fails when the console is silent for too
// long, when the whole run takes too long, or when QEMU exits without a
// result line. The serial log of a failed run is kept in a file, and
// Result.SerialLog is its path.
//
// Progress shows the initramfs, the accelerator and why it was chosen,
// and the QEMU command line, which replays the run by hand with the serial
// console on the terminal. The last line gives the time of each phase.
//
// Environment variables:
//
//	UMHBLOB_ACCEL        QEMU accelerator: auto (default), kvm or tcg
//	UMHBLOB_KVM_PROBE_TIMEOUT
//	                     bound of the KVM probe, a Go duration (default 5s)
//	UMHBLOB_QEMU         QEMU binary (default qemu-system-x86_64)
//	UMHBLOB_VM_MEMORY    guest memory in MiB (default 512; a KASAN and
//	                     lockdep kernel needs 1024 or more)
//	UMHBLOB_CACHE        cache directory for initramfs images
//	                     (default ${XDG_CACHE_HOME:-$HOME/.cache}/umhblob)
//	VMTEST_QEMU_APPEND   extra QEMU arguments, added by package vmtest/qemu
//	VMTEST_KERNEL_APPEND extra kernel arguments, added by package vmtest/qemu
//	VMTEST_TIMEOUT       a second limit on QEMU's run time, applied by
//	                     package vmtest/qemu (default none)
//
// The VM test in this package also reads UMHBLOB_KERNEL, UMHBLOB_MODULE and
// UMHBLOB_VM_TIMEOUT, which vm_test.go describes.
package vm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/umhblob/umhblob/harness/internal/paths"
	"github.com/umhblob/umhblob/harness/report"
)

// Defaults for the zero values in Config.
const (
	DefaultMemoryMiB = 512
	DefaultCPUs      = 2
	DefaultTimeout   = 5 * time.Minute
	// DefaultSilence must exceed the guest's heartbeat interval (10 s)
	// and the longest time the kernel is silent during boot under TCG.
	DefaultSilence = 60 * time.Second
)

// Config describes one VM run.
type Config struct {
	Kernel string // bzImage to boot; required
	Module string // umhblob.ko to test; "" boots without it, so insmod fails
	Demo   bool   // run the guest in demo mode, which prints a transcript

	Accel     string // "auto", "kvm" or "tcg"; "" means $UMHBLOB_ACCEL, or auto
	QEMU      string // QEMU binary; "" means $UMHBLOB_QEMU, or qemu-system-x86_64
	MemoryMiB int    // guest memory; 0 means $UMHBLOB_VM_MEMORY, or DefaultMemoryMiB
	CPUs      int    // guest CPUs; 0 means DefaultCPUs

	// KVMProbeTimeout bounds the probe that Accel "auto" runs; 0 means
	// $UMHBLOB_KVM_PROBE_TIMEOUT, or DefaultKVMProbeTimeout.
	KVMProbeTimeout time.Duration
	// KernelArgs are added to the kernel command line.
	KernelArgs []string

	Timeout time.Duration // whole run; 0 means DefaultTimeout
	Silence time.Duration // maximum time without a serial line; 0 means DefaultSilence

	CacheDir string // "" means the default cache directory
	LogDir   string // directory for a failed run's serial log; "" means os.TempDir()

	// OnLine is called with every serial line after control characters
	// are removed, for example to echo the console with a prefix. nil
	// ignores the lines.
	OnLine func(line string)
	// Progress receives the harness's own messages: the initramfs, the
	// accelerator and the QEMU command line. nil discards them.
	Progress io.Writer
}

// Result is the outcome of a run that booted.
type Result struct {
	Passed    bool
	Reason    string        // failure message, or "all steps passed"
	Steps     []report.Step // the guest's steps, in order
	Accel     string        // the accelerator QEMU ran with
	AccelWhy  string        // why: "requested", or the probe's decision
	Cmdline   string        // the QEMU command line, quoted for a shell
	SerialLog string        // the serial log, kept only when the run failed
	Boot      time.Duration // from starting QEMU to the guest's first report line
	Duration  time.Duration // from starting QEMU to its exit

	resultAt time.Duration // from starting QEMU to the result line, or 0
}

// Run builds the initramfs and boots the guest. The error is non-nil only
// when the run could not start. A guest that fails returns a Result with
// Passed false.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var phases phaseTimer
	phases.start("initramfs")
	initrd, err := Initramfs(ctx, cfg.Module, cfg.CacheDir, cfg.Progress)
	if err != nil {
		return nil, err
	}
	phases.start("accel")
	accel, why, err := chooseAccel(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	cfg.Accel = accel
	phases.stop()
	fmt.Fprintf(cfg.Progress, "vm: accelerator %s (%s)\n", accel, why)

	res, err := boot(ctx, cfg, initrd)
	if err != nil {
		return nil, err
	}
	res.AccelWhy = why
	switch {
	case res.Boot == 0:
		phases.add("qemu", res.Duration) // the guest program never started
	case res.resultAt == 0:
		phases.add("boot", res.Boot)
		phases.add("guest", res.Duration-res.Boot)
	default:
		phases.add("boot", res.Boot)
		phases.add("guest", res.resultAt-res.Boot)
		phases.add("exit", res.Duration-res.resultAt)
	}
	verdict := "passed"
	if !res.Passed {
		verdict = "failed"
	}
	fmt.Fprintf(cfg.Progress, "vm: %s with %s in %s\n", verdict, res.Accel, phases.summary())
	return res, nil
}

func (cfg *Config) setDefaults() error {
	if cfg.Kernel == "" {
		return errors.New("no kernel image given")
	}
	for _, path := range []*string{&cfg.Kernel, &cfg.Module} {
		if *path == "" {
			continue
		}
		if _, err := os.Stat(*path); err != nil {
			return fmt.Errorf("find VM input: %w", err)
		}
		abs, err := filepath.Abs(*path)
		if err != nil {
			return err
		}
		*path = abs
	}
	cfg.Accel = cmp.Or(cfg.Accel, os.Getenv("UMHBLOB_ACCEL"), AccelAuto)
	if cfg.Accel != AccelAuto && cfg.Accel != AccelTCG && cfg.Accel != AccelKVM {
		return fmt.Errorf("invalid accelerator %q (UMHBLOB_ACCEL): want auto, kvm or tcg", cfg.Accel)
	}
	if cfg.KVMProbeTimeout == 0 {
		d, err := envDuration("UMHBLOB_KVM_PROBE_TIMEOUT", DefaultKVMProbeTimeout)
		if err != nil {
			return err
		}
		cfg.KVMProbeTimeout = d
	}
	if cfg.MemoryMiB == 0 {
		n, err := envInt("UMHBLOB_VM_MEMORY", DefaultMemoryMiB)
		if err != nil {
			return err
		}
		cfg.MemoryMiB = n
	}

	cfg.QEMU = cmp.Or(cfg.QEMU, os.Getenv("UMHBLOB_QEMU"), "qemu-system-x86_64")
	cfg.CPUs = cmp.Or(cfg.CPUs, DefaultCPUs)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	cfg.Silence = cmp.Or(cfg.Silence, DefaultSilence)
	cfg.LogDir = cmp.Or(cfg.LogDir, os.TempDir())
	if cfg.CacheDir == "" {
		dir, err := paths.CacheDir()
		if err != nil {
			return err
		}
		cfg.CacheDir = dir
	}
	if cfg.OnLine == nil {
		cfg.OnLine = func(string) {}
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	return nil
}

// qemuCommand returns the QEMU binary and the arguments vmtest does not
// add itself.
func (cfg *Config) qemuCommand() string {
	args := []string{cfg.QEMU, "-m", fmt.Sprint(cfg.MemoryMiB), "-smp", fmt.Sprint(cfg.CPUs), "-accel", cfg.Accel}
	if cfg.Accel == AccelKVM {
		// NOTE: only the KVM probe has run with -accel kvm so far. The
		// test VMs ran under TCG because nested KVM hangs a guest on
		// the machines they ran on.
		args = append(args, "-cpu", "host")
	}
	// -no-reboot turns the guest's final restart into a QEMU exit, and
	// -nic none keeps QEMU's default network card, and its user-mode
	// network, out of the guest.
	args = append(args, "-no-reboot", "-nic", "none")
	return strings.Join(args, " ")
}

// kernelArgs returns the kernel command line: everything on the serial
// console, and every oops or warning turned into a panic that, with
// -no-reboot, ends QEMU at once.
func (cfg *Config) kernelArgs() []string {
	args := []string{"console=ttyS0", "panic=-1", "oops=panic", "panic_on_warn=1"}
	if cfg.Demo {
		args = append(args, "umhguest.mode=demo")
	}
	return append(args, cfg.KernelArgs...)
}

func boot(ctx context.Context, cfg Config, initrd string) (*Result, error) {
	logFile, err := os.CreateTemp(cfg.LogDir, "umhblob-serial-*.log")
	if err != nil {
		return nil, fmt.Errorf("create serial log: %w", err)
	}
	lines := make(chan string, 1024)
	serial := newLineWriter(logFile, lines)

	start := time.Now()
	vm, err := qemu.StartContext(ctx, qemu.ArchAMD64,
		qemu.WithQEMUCommand(cfg.qemuCommand()),
		qemu.WithKernel(cfg.Kernel),
		qemu.WithInitramfs(initrd),
		qemu.WithAppendKernel(cfg.kernelArgs()...),
		qemu.WithSerialOutput(serial),
	)
	if err != nil {
		logFile.Close()
		os.Remove(logFile.Name())
		return nil, fmt.Errorf("start QEMU: %w", err)
	}
	res := &Result{Accel: cfg.Accel, Cmdline: vm.CmdlineQuoted()}
	fmt.Fprintf(cfg.Progress, "vm: serial log %s (kept if the run fails)\n", logFile.Name())
	fmt.Fprintf(cfg.Progress, "vm: %s\n", res.Cmdline)

	waitErr := make(chan error, 1)
	go func() { waitErr <- vm.Wait() }()

	m := &monitor{demo: cfg.Demo}
	onLine := func(line string) {
		if res.Boot == 0 && strings.HasPrefix(line, report.Prefix) {
			res.Boot = time.Since(start)
		}
		if res.resultAt == 0 && strings.HasPrefix(line, report.Prefix+"RESULT ") {
			res.resultAt = time.Since(start)
		}
		cfg.OnLine(line)
	}
	stopReason := watch(ctx, lines, m, onLine, func() { vm.Kill() }, timing{
		Total:       cfg.Timeout,
		Silence:     cfg.Silence,
		Grace:       3 * time.Second,
		AfterResult: 30 * time.Second,
		KillWait:    10 * time.Second,
	})
	var exitErr error
	select {
	case exitErr = <-waitErr:
	case <-time.After(30 * time.Second):
		// Reached only when watch gave up on a killed QEMU.
		exitErr = errors.New("QEMU did not exit after being killed")
	}
	res.Duration = time.Since(start)
	res.Steps = m.steps
	res.Passed, res.Reason = m.verdict(stopReason, exitErr)

	logFile.Close()
	if res.Passed {
		os.Remove(logFile.Name())
	} else {
		res.SerialLog = logFile.Name()
	}
	return res, nil
}

// envDuration returns the Go duration in the environment variable name,
// or def when it is unset.
func envDuration(name string, def time.Duration) (time.Duration, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid %s %q: want a positive Go duration such as 10s", name, s)
	}
	return d, nil
}

// envInt returns the positive integer in the environment variable name,
// or def when it is unset.
func envInt(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid %s %q: want a positive integer", name, s)
	}
	return n, nil
}
