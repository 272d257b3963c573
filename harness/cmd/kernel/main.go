// Command kernel builds the test kernel for umhblob, or finds it in the
// cache, and prints its build directory on stdout, for use as KDIR:
//
//	make -C "$(go run ./harness/cmd/kernel)" M=$PWD/kmod
//	go run ./harness/cmd/kernel -version 6.12 -variant debug
//
// Progress goes to stderr. The kernel image is arch/x86/boot/bzImage inside
// the printed directory, or printed directly with -image.
//
// With -check it builds nothing and checks a kernel build directory, for
// example your own, for what the module and the VM guest need: a release
// from 5.9 to 6.16, CONFIG_USERMODE_DRIVER=y, module loading and
// unloading, every setting of kernel-config/base.config, Module.symvers
// and the bzImage. It prints one line per failed check and exits with
// status 1 if any failed.
//
//	go run ./harness/cmd/kernel -check ~/linux/build
//
// Flags:
//
//	-version     kernel version (default $KERNEL, or 6.1 when KERNEL is unset)
//	-variant     kernel variant: "" for the test kernel, debug (KASAN,
//	             lockdep, kmemleak) or gdb (debug information and gdb
//	             scripts); kernel-config/<variant>.config is merged last
//	             (default $KERNEL_VARIANT, or "")
//	-config-dir  directory with the config fragments and patches
//	             (default kernel-config in the repository root)
//	-j           parallel make jobs (default: the number of CPUs)
//	-image       print the bzImage path instead of the build directory
//	-check       kernel build directory to check instead of building
//
// Environment variables:
//
//	KERNEL                 default for -version
//	KERNEL_VARIANT         default for -variant
//	UMHBLOB_CACHE          cache directory
//	                       (default ${XDG_CACHE_HOME:-$HOME/.cache}/umhblob)
//	UMHBLOB_DEBIAN_MIRROR  Debian mirror for the kernel source packages
//	                       (default http://deb.debian.org)
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/umhblob/umhblob/harness/internal/paths"
	"github.com/umhblob/umhblob/harness/kbuild"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "kernel: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kernel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	version := fs.String("version", cmp.Or(os.Getenv("KERNEL"), "6.1"), "kernel `version` to build, one of "+strings.Join(kbuild.Versions(), ", "))
	variant := fs.String("variant", os.Getenv("KERNEL_VARIANT"), "kernel `variant`: empty for the test kernel, debug or gdb")
	configDir := fs.String("config-dir", "", "`directory` with base.config, <version>.config and <version>/*.patch (default kernel-config in the repository root)")
	jobs := fs.Int("j", 0, "parallel make `jobs` (default: the number of CPUs)")
	image := fs.Bool("image", false, "print the bzImage path instead of the build directory")
	check := fs.String("check", "", "kernel build `directory` to check instead of building a kernel")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *configDir == "" {
		root, err := paths.Root()
		if err != nil {
			return err
		}
		*configDir = filepath.Join(root, "kernel-config")
	}

	if *check != "" {
		report, err := kbuild.CheckBuildDir(*configDir, *check)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s\n", *check, report)
		return nil
	}

	k, err := kbuild.Build(ctx, kbuild.Options{
		Version:   *version,
		Variant:   *variant,
		ConfigDir: *configDir,
		Jobs:      *jobs,
		Progress:  stderr,
	})
	if err != nil {
		return err
	}
	if *image {
		fmt.Fprintln(stdout, k.Image)
	} else {
		fmt.Fprintln(stdout, k.BuildDir)
	}
	return nil
}
