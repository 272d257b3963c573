package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/umhblob/umhblob/harness/internal/paths"
)

// umhctlPackage is the request CLI, added to the shell image when the
// repository has it.
const umhctlPackage = paths.ModulePath + "/cmd/umhctl"

// shellCommands are the u-root v0.16.0 core commands in the shell image.
// go.mod lists each as a tool, which keeps their dependencies in go.sum.
var shellCommands = []string{
	"cat", "cp", "dd", "dmesg", "echo", "find", "free", "gosh", "grep",
	"head", "hexdump", "insmod", "kill", "ln", "ls", "lsmod", "mkdir",
	"mount", "mv", "poweroff", "ps", "pwd", "rm", "rmmod", "shutdown",
	"sleep", "strace", "sync", "tail", "umount", "uname", "uptime", "wc",
}

// shellImage returns the spec of the interactive initramfs: u-root's init,
// which starts gosh on the console because there is no uinit, the core
// commands, and umhctl when withUmhctl is set.
func shellImage(withUmhctl bool) imageSpec {
	commands := []string{initPackage}
	for _, name := range shellCommands {
		commands = append(commands, "github.com/u-root/u-root/cmds/core/"+name)
	}
	recipe := "uimage busybox init+core shell commands, init=init, shell=gosh, skip ldd, CGO_ENABLED=0 GOARCH=amd64; v1"
	if withUmhctl {
		commands = append(commands, umhctlPackage)
		recipe += " +umhctl"
	}
	return imageSpec{
		recipe:     recipe,
		basePrefix: "shell",
		modPrefix:  "shellmod",
		commands:   commands,
		shell:      "gosh",
	}
}

// ShellInitramfs returns the initramfs of an interactive VM: a gosh shell
// on the console, the u-root core commands in shellCommands, umhctl if the
// repository has cmd/umhctl, and the module at GuestModulePath when module
// is not "". Nothing loads the module.
func ShellInitramfs(ctx context.Context, module, cacheDir string, progress io.Writer) (string, error) {
	root, err := paths.Root()
	if err != nil {
		return "", err
	}
	_, err = os.Stat(filepath.Join(root, "cmd", "umhctl"))
	withUmhctl := err == nil
	if !withUmhctl {
		fmt.Fprintf(progress, "vm: initramfs: %s not found, the shell image has no umhctl\n", umhctlPackage)
	}
	return buildImage(ctx, shellImage(withUmhctl), module, cacheDir, progress)
}

// ShellOptions configures Shell.
type ShellOptions struct {
	// Stdin, Stdout and Stderr are QEMU's. With the serial console on
	// stdio and Stdin a terminal, QEMU switches the terminal to raw
	// mode and Ctrl-A X quits.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Shell boots cfg.Kernel with the shell initramfs and the serial console
// and QEMU's monitor on opts' stdio, and returns when QEMU exits. The
// guest restarts or powers off into a QEMU exit; a kernel panic exits too
// (panic=-1 with -no-reboot).
func Shell(ctx context.Context, cfg Config, opts ShellOptions) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	initrd, err := ShellInitramfs(ctx, cfg.Module, cfg.CacheDir, cfg.Progress)
	if err != nil {
		return err
	}
	accel, why, err := chooseAccel(ctx, &cfg)
	if err != nil {
		return err
	}
	cfg.Accel = accel
	fmt.Fprintf(cfg.Progress, "vm: accelerator %s (%s)\n", accel, why)

	args := cfg.shellArgs(initrd, append([]string{"console=ttyS0", "panic=-1"}, cfg.KernelArgs...))
	args = append(args, "-nographic")
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	fmt.Fprintf(cfg.Progress, "vm: %s\n", shellQuote(args))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("run QEMU: %w", err)
	}
	return nil
}

// shellArgs returns the QEMU command line shared by Shell and the gdb
// session, without the console options.
func (cfg *Config) shellArgs(initrd string, kernelArgs []string) []string {
	args := strings.Fields(cfg.qemuCommand())
	return append(args,
		"-kernel", cfg.Kernel,
		"-initrd", initrd,
		"-append", strings.Join(kernelArgs, " "),
	)
}

// shellQuote quotes args for a POSIX shell, so that a printed command line
// can be pasted to replay it.
func shellQuote(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			quoted[i] = a
			continue
		}
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

// errNoGDB is returned when the gdb command is missing.
var errNoGDB = errors.New("gdb not found in PATH: install the Debian package gdb")
