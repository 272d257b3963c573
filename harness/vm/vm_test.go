package vm_test

// The VM tests boot the real kernel with the real module and need:
//
//	UMHBLOB_KERNEL      bzImage to boot, e.g. $KDIR/arch/x86/boot/bzImage
//	UMHBLOB_MODULE      umhblob.ko built against that kernel
//	UMHBLOB_VM_TIMEOUT  limit for each VM run (default 5m)
//
// Relative paths are taken from the repository root, not from this
// package's directory where go test runs. Without UMHBLOB_KERNEL every VM
// test skips. Package vm lists the other environment variables, such as
// UMHBLOB_ACCEL.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umhblob/umhblob/harness/internal/paths"
	"github.com/umhblob/umhblob/harness/report"
	"github.com/umhblob/umhblob/harness/vm"
)

func TestVMGuestSteps(t *testing.T) {
	kernel := kernelT(t)
	module := envPathT(t, "UMHBLOB_MODULE")
	if module == "" {
		t.Skip("UMHBLOB_MODULE is not set; set it to the umhblob.ko built against UMHBLOB_KERNEL")
	}

	res := runVMT(t, vm.Config{Kernel: kernel, Module: module})

	for _, name := range report.Steps {
		t.Run(name, func(t *testing.T) {
			step, ok := findStep(res.Steps, name)
			if !ok {
				t.Fatalf("guest printed no %s step", name)
			}
			t.Logf("%s (%v): %s", step.Name, step.Duration, step.Detail)
			if !step.Passed {
				t.Errorf("step %s failed: %s", step.Name, step.Detail)
			}
		})
	}
	if !res.Passed {
		t.Fatalf("VM run failed: %s\nserial log: %s", res.Reason, res.SerialLog)
	}
	t.Logf("accelerator %s: guest started %v after QEMU, run took %v", res.Accel, res.Boot, res.Duration)
}

// TestVMWithoutModule checks the harness itself: without a module the
// guest must report a failed insmod step and RESULT FAIL, and the run must
// fail with that step's detail.
func TestVMWithoutModule(t *testing.T) {
	kernel := kernelT(t)
	if testing.Short() {
		t.Skip("boots a VM only to check the harness; skipped in -short mode")
	}

	res := runVMT(t, vm.Config{Kernel: kernel})

	if res.Passed {
		t.Fatalf("run without a module passed: %s", res.Reason)
	}
	insmod, ok := findStep(res.Steps, report.StepInsmod)
	if !ok {
		t.Fatalf("guest printed no insmod step; reason: %s", res.Reason)
	}
	if insmod.Passed {
		t.Errorf("insmod step passed without a module: %s", insmod.Detail)
	}
	if want := vm.GuestModulePath; !strings.Contains(insmod.Detail, want) {
		t.Errorf("insmod detail = %q, want it to name %s", insmod.Detail, want)
	}
	if !strings.Contains(res.Reason, "RESULT FAIL") || !strings.Contains(res.Reason, "insmod") {
		t.Errorf("Reason = %q, want the guest's RESULT FAIL and the insmod step", res.Reason)
	}
	if res.SerialLog == "" {
		t.Errorf("SerialLog is empty, want the path of the kept serial log")
	} else if _, err := os.Stat(res.SerialLog); err != nil {
		t.Errorf("serial log of the failed run: %v", err)
	} else {
		os.Remove(res.SerialLog) // this failure was expected
	}
	t.Logf("accelerator %s: guest started %v after QEMU, run took %v", res.Accel, res.Boot, res.Duration)
}

// kernelT returns $UMHBLOB_KERNEL or skips the test.
func kernelT(t testing.TB) string {
	t.Helper()
	kernel := envPathT(t, "UMHBLOB_KERNEL")
	if kernel == "" {
		t.Skip("UMHBLOB_KERNEL is not set; set it to a bzImage from go run ./harness/cmd/kernel -image to run the VM tests")
	}
	return kernel
}

// envPathT returns the path in the environment variable name, resolved
// against the repository root when it is relative, or "" when it is unset.
func envPathT(t testing.TB, name string) string {
	t.Helper()
	path := os.Getenv(name)
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	root, err := paths.Root()
	if err != nil {
		t.Fatalf("resolve %s=%s: %v", name, path, err)
	}
	return filepath.Join(root, path)
}

// runVMT boots the VM with the serial console in the test log and returns
// the result. It fails the test only when the VM could not start.
func runVMT(t testing.TB, cfg vm.Config) *vm.Result {
	t.Helper()
	timeout := vm.DefaultTimeout
	if s := os.Getenv("UMHBLOB_VM_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("invalid UMHBLOB_VM_TIMEOUT %q: %v", s, err)
		}
		timeout = d
	}
	ctx := context.Background()
	if deadline, ok := t.(*testing.T).Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-10*time.Second))
		defer cancel()
	}
	cfg.Timeout = timeout
	cfg.OnLine = func(line string) { t.Logf("vm| %s", line) }
	cfg.Progress = logWriter{t}

	res, err := vm.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("run VM: %v", err)
	}
	return res
}

func findStep(steps []report.Step, name string) (report.Step, bool) {
	for _, s := range steps {
		if s.Name == name {
			return s, true
		}
	}
	return report.Step{}, false
}

// logWriter sends each Write to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestVMKVMProbe runs the real KVM probe with UMHBLOB_KERNEL and checks
// that it decides within its bound. Which accelerator it picks depends on
// the host; the test logs the decision and the time it took.
func TestVMKVMProbe(t *testing.T) {
	kernel := kernelT(t)
	cfg := vm.Config{Kernel: kernel, Accel: vm.AccelAuto, KVMProbeTimeout: vm.DefaultKVMProbeTimeout}

	start := time.Now()
	accel, why, err := vm.ChooseAccel(context.Background(), cfg)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("ChooseAccel: %v", err)
	}
	t.Logf("accelerator %s after %v: %s", accel, elapsed.Round(time.Millisecond), why)
	if accel != vm.AccelKVM && accel != vm.AccelTCG {
		t.Errorf("ChooseAccel = %q, want kvm or tcg", accel)
	}
	// The probe may wait up to 5 s more for a killed QEMU's output.
	if limit := cfg.KVMProbeTimeout + 6*time.Second; elapsed > limit {
		t.Errorf("probe took %v, want at most %v", elapsed, limit)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && accel != vm.AccelTCG {
		t.Errorf("ChooseAccel = %s without /dev/kvm, want tcg", accel)
	}
}
