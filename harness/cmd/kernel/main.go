// Command kernel builds the test kernel for umhblob, or finds it in the
// cache, and prints its build directory on stdout, for use as KDIR:
//
//	make -C "$(go run ./harness/cmd/kernel)" M=$PWD/kmod
//
// Progress goes to stderr. The kernel image is arch/x86/boot/bzImage inside
// the printed directory, or printed directly with -image.
//
// Flags:
//
//	-version     kernel version (default $KERNEL, or 6.1 when KERNEL is unset)
//	-config-dir  directory with the config fragments and patches
//	             (default kernel-config in the repository root)
//	-j           parallel make jobs (default: the number of CPUs)
//	-image       print the bzImage path instead of the build directory
//
// Environment variables:
//
//	KERNEL           default for -version
//	UMHBLOB_CACHE    cache directory
//	                 (default ${XDG_CACHE_HOME:-$HOME/.cache}/umhblob)
package main

import (
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
	defaultVersion := os.Getenv("KERNEL")
	if defaultVersion == "" {
		defaultVersion = "6.1"
	}
	version := fs.String("version", defaultVersion, "kernel `version` to build, one of "+strings.Join(kbuild.Versions(), ", "))
	configDir := fs.String("config-dir", "", "`directory` with base.config, <version>.config and <version>/*.patch (default kernel-config in the repository root)")
	jobs := fs.Int("j", 0, "parallel make `jobs` (default: the number of CPUs)")
	image := fs.Bool("image", false, "print the bzImage path instead of the build directory")
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

	k, err := kbuild.Build(ctx, kbuild.Options{
		Version:   *version,
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
