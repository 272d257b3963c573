package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Accelerator names for Config.Accel and UMHBLOB_ACCEL.
const (
	AccelAuto = "auto" // probe KVM, use it if a guest boots, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// DefaultKVMProbeTimeout bounds the KVM probe. A minimal kernel under
// working KVM should reach the end of its boot in about a second, an
// estimate because no host tried so far had working KVM. Where nested KVM
// hangs the guest after the BIOS, the probe costs this whole bound before
// the run falls back to TCG.
const DefaultKVMProbeTimeout = 5 * time.Second

// kernelBanner starts the first console line of every Linux boot.
const kernelBanner = "Linux version "

// probeOutcome is the observation of one KVM probe. decideAccel turns it
// into a decision, so that the decision logic has tests without QEMU.
type probeOutcome struct {
	DeviceErr error         // opening /dev/kvm failed; QEMU was not started
	StartErr  error         // QEMU could not be started
	Exited    bool          // QEMU exited by itself within the bound
	ExitErr   error         // QEMU's exit error when Exited
	Banner    bool          // the console showed the kernel banner
	LastLine  string        // last non-empty console line
	Elapsed   time.Duration // from starting the probe to the decision
	Timeout   time.Duration // the bound the probe ran with
}

// decideAccel returns the accelerator for a probe outcome and the reason
// for it. KVM is chosen only when a kernel booted under it and QEMU exited
// by itself, which with -no-reboot and panic=-1 means the kernel got as
// far as mounting a root filesystem and then stopped the machine.
func decideAccel(o probeOutcome) (string, string) {
	switch {
	case o.DeviceErr != nil:
		return AccelTCG, fmt.Sprintf("KVM unusable: %v", o.DeviceErr)
	case o.StartErr != nil:
		return AccelTCG, fmt.Sprintf("QEMU with -accel kvm did not start: %v", o.StartErr)
	case !o.Exited && !o.Banner:
		return AccelTCG, fmt.Sprintf("a guest under KVM printed no kernel line within %v; last line %q", o.Timeout, o.LastLine)
	case !o.Exited:
		return AccelTCG, fmt.Sprintf("a guest under KVM did not finish booting within %v; last line %q", o.Timeout, o.LastLine)
	case !o.Banner:
		return AccelTCG, fmt.Sprintf("QEMU with -accel kvm exited (%s) before the kernel printed anything; last line %q", exitStatus(o.ExitErr), o.LastLine)
	}
	return AccelKVM, fmt.Sprintf("a guest under KVM booted in %v", o.Elapsed.Round(time.Millisecond))
}

// probeConfig is the part of a run's Config that the probe uses.
type probeConfig struct {
	QEMU    string
	Kernel  string
	CPUs    int
	Device  string // KVM device, normally /dev/kvm
	Timeout time.Duration
}

// probeKVM boots pc.Kernel without an initramfs under -accel kvm and
// records how far it got. Without an initramfs the kernel panics when it
// finds no root filesystem, and QEMU, started with -no-reboot and
// panic=-1, exits.
func probeKVM(ctx context.Context, pc probeConfig) (o probeOutcome) {
	start := time.Now()
	o.Timeout = pc.Timeout
	defer func() { o.Elapsed = time.Since(start) }()

	dev, err := os.OpenFile(pc.Device, os.O_RDWR, 0)
	if err != nil {
		o.DeviceErr = err
		return o
	}
	dev.Close()

	args := []string{
		"-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", fmt.Sprint(pc.CPUs),
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", pc.Kernel, "-append", "console=ttyS0 panic=-1",
	}
	cmd := exec.CommandContext(ctx, pc.QEMU, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		o.StartErr = err
		return o
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		o.StartErr = err
		return o
	}

	// The reader owns lastLine and banner until scanned is closed.
	var lastLine string
	var banner bool
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		scanner := bufio.NewScanner(out)
		for scanner.Scan() {
			line := strings.TrimSpace(cleanLine(scanner.Text()))
			if line == "" {
				continue
			}
			lastLine = line
			banner = banner || strings.Contains(line, kernelBanner)
		}
		io.Copy(io.Discard, out)
	}()

	waitErr := make(chan error, 1)
	go func() {
		<-scanned // Wait must not close the pipe while it is read
		waitErr <- cmd.Wait()
	}()
	timer := time.NewTimer(pc.Timeout)
	defer timer.Stop()
	select {
	case err := <-waitErr:
		o.Exited, o.ExitErr = true, err
		if err != nil && stderr.Len() > 0 {
			o.ExitErr = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		if ctx.Err() != nil {
			o.Exited, o.StartErr = false, ctx.Err()
		}
	case <-timer.C:
		cmd.Process.Kill()
		select {
		case <-waitErr:
		case <-time.After(5 * time.Second):
			// A child that QEMU left behind keeps the pipe open.
			// The decision does not need the rest of its output.
			return o
		}
	}
	o.LastLine, o.Banner = lastLine, banner
	return o
}

// ChooseAccel returns the accelerator that Run would use for cfg and the
// reason for it. With cfg.Accel (or UMHBLOB_ACCEL) set to kvm or tcg it
// returns that at once. With auto it boots cfg.Kernel under KVM for at
// most cfg.KVMProbeTimeout, every time it is called.
func ChooseAccel(ctx context.Context, cfg Config) (string, string, error) {
	if err := cfg.setDefaults(); err != nil {
		return "", "", err
	}
	return probeAccel(ctx, &cfg)
}

// probeDecision is the outcome of an auto probe, kept for the process.
type probeDecision struct {
	accel, reason string
}

var (
	probeCacheMu sync.Mutex
	probeCache   = map[probeConfig]probeDecision{}
)

// chooseAccel is ChooseAccel for a cfg whose defaults are set, except
// that an auto probe runs once per process for each QEMU, kernel and
// CPU count, so that a test binary that boots several VMs pays for it once.
func chooseAccel(ctx context.Context, cfg *Config) (string, string, error) {
	if cfg.Accel != AccelAuto {
		return probeAccel(ctx, cfg)
	}
	key := probeConfig{QEMU: cfg.QEMU, Kernel: cfg.Kernel, CPUs: cfg.CPUs, Timeout: cfg.KVMProbeTimeout}
	probeCacheMu.Lock()
	defer probeCacheMu.Unlock()
	if d, ok := probeCache[key]; ok {
		return d.accel, d.reason + " (probed earlier in this process)", nil
	}
	accel, reason, err := probeAccel(ctx, cfg)
	if err == nil {
		probeCache[key] = probeDecision{accel, reason}
	}
	return accel, reason, err
}

// probeAccel returns cfg.Accel when it is kvm or tcg, and otherwise runs
// the probe.
func probeAccel(ctx context.Context, cfg *Config) (string, string, error) {
	switch cfg.Accel {
	case AccelKVM, AccelTCG:
		return cfg.Accel, "requested", nil
	case AccelAuto:
	default:
		return "", "", fmt.Errorf("invalid accelerator %q: want auto, kvm or tcg", cfg.Accel)
	}
	if cfg.Kernel == "" {
		return "", "", errors.New("probe KVM: no kernel image given")
	}
	o := probeKVM(ctx, probeConfig{
		QEMU:    cfg.QEMU,
		Kernel:  cfg.Kernel,
		CPUs:    cfg.CPUs,
		Device:  "/dev/kvm",
		Timeout: cfg.KVMProbeTimeout,
	})
	if err := ctx.Err(); err != nil {
		return "", "", fmt.Errorf("probe KVM: %w", err)
	}
	accel, reason := decideAccel(o)
	return accel, fmt.Sprintf("auto, decided in %v: %s", o.Elapsed.Round(time.Millisecond), reason), nil
}
