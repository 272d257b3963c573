// Command demo boots the umhblob test VM in demo mode and prints what the
// guest does, step by step. The transcript shows the module load, the
// helper's pid and parent, echo round trips with their sizes and times,
// the errnos of malformed requests, and the unload and reload cycles.
// The command exits with status 0 when every step passed and 1 otherwise.
//
//	go run ./harness/cmd/demo -kernel $KDIR/arch/x86/boot/bzImage -module kmod/umhblob.ko
//
// Flags:
//
//	-kernel   bzImage to boot (default $UMHBLOB_KERNEL)
//	-module   umhblob.ko to load in the guest (default $UMHBLOB_MODULE)
//	-accel    QEMU accelerator: auto, kvm or tcg (default $UMHBLOB_ACCEL, or
//	          auto, which probes KVM and falls back to TCG)
//	-timeout  limit for the whole run (default 5m)
//	-v        print every serial console line, not only the transcript
//
// Package harness/vm lists the other environment variables it reads.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/umhblob/umhblob/harness/report"
	"github.com/umhblob/umhblob/harness/vm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stdout)
	kernel := fs.String("kernel", os.Getenv("UMHBLOB_KERNEL"), "bzImage `path` to boot")
	module := fs.String("module", os.Getenv("UMHBLOB_MODULE"), "umhblob.ko `path` to load in the guest")
	accel := fs.String("accel", "", "QEMU accelerator: auto, kvm or tcg (default $UMHBLOB_ACCEL, or auto)")
	timeout := fs.Duration("timeout", vm.DefaultTimeout, "limit for the whole run")
	verbose := fs.Bool("v", false, "print every serial console line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *kernel == "" {
		return errors.New("no kernel: set -kernel or UMHBLOB_KERNEL to a bzImage (go run ./harness/cmd/kernel -image prints one)")
	}
	if *module == "" {
		return errors.New("no module: set -module or UMHBLOB_MODULE to umhblob.ko")
	}

	res, err := vm.Run(ctx, vm.Config{
		Kernel:   *kernel,
		Module:   *module,
		Demo:     true,
		Accel:    *accel,
		Timeout:  *timeout,
		OnLine:   transcript(stdout, *verbose),
		Progress: stdout,
	})
	if err != nil {
		return err
	}
	started := "the guest program never started"
	if res.Boot > 0 {
		started = fmt.Sprintf("guest program started %v after QEMU", res.Boot.Round(time.Millisecond))
	}
	fmt.Fprintf(stdout, "\ndemo: accelerator %s, %s, run took %v\n", res.Accel, started, res.Duration.Round(time.Millisecond))
	if !res.Passed {
		fmt.Fprintf(stdout, "demo: FAIL: %s\ndemo: serial log: %s\n", res.Reason, res.SerialLog)
		return errors.New("the guest failed")
	}
	fmt.Fprintln(stdout, "demo: PASS")
	return nil
}

// transcript returns an OnLine function that prints the guest's INFO
// lines and empty lines as they are and its STEP and RESULT lines as short
// verdicts. With verbose it prints every other line too, after "| ".
func transcript(w io.Writer, verbose bool) func(string) {
	return func(line string) {
		parsed, err := report.Parse(line)
		switch {
		case err != nil:
			fmt.Fprintf(w, "? %s\n", line)
		case parsed.Kind == report.KindInfo:
			fmt.Fprintln(w, parsed.Text)
		case parsed.Kind == report.KindStep:
			s := parsed.Step
			fmt.Fprintf(w, "--- %s %s (%v)\n", verdict(s.Passed), s.Name, s.Duration)
			if !s.Passed {
				fmt.Fprintf(w, "    %s\n", s.Detail)
			}
		case parsed.Kind == report.KindResult:
			fmt.Fprintf(w, "\nguest result: %s\n", verdict(parsed.Passed))
		case line == "":
			fmt.Fprintln(w) // the guest separates steps with empty lines
		case verbose:
			fmt.Fprintf(w, "| %s\n", line)
		}
	}
}

func verdict(passed bool) string {
	if passed {
		return "PASS"
	}
	return "FAIL"
}
