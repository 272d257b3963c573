package vm

import (
	"strings"
	"testing"
)

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"qemu-system-x86_64", "-append", "console=ttyS0 panic=-1", "-initrd", "/c/shell-1.cpio", "it's", ""})
	want := `qemu-system-x86_64 -append 'console=ttyS0 panic=-1' -initrd /c/shell-1.cpio 'it'\''s' ''`
	if got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}

func TestGDBScript(t *testing.T) {
	script := gdbScript("/cache/linux-6.1-gdb-abc", "/src/kmod", 40123)
	lines := strings.Split(strings.TrimSpace(script), "\n")
	// The order matters: symbols before connecting, the hardware
	// breakpoint before the first continue, lx-symbols after it.
	want := []string{
		"add-auto-load-safe-path /cache/linux-6.1-gdb-abc",
		"file /cache/linux-6.1-gdb-abc/vmlinux",
		"target remote 127.0.0.1:40123",
		"hbreak kernel_init",
		"continue",
		"delete",
		"lx-symbols /src/kmod",
		"set breakpoint pending on",
	}
	next := 0
	for _, line := range lines {
		if next < len(want) && line == want[next] {
			next++
		}
	}
	if next < len(want) {
		t.Errorf("gdb script lacks %q in order; script:\n%s", want[next], script)
	}
	if noModule := gdbScript("/k", "", 1); !strings.Contains(noModule, "lx-symbols\n") {
		t.Errorf("gdb script without a module directory = %q, want a bare lx-symbols", noModule)
	}
}

func TestShellImageCommands(t *testing.T) {
	spec := shellImage(true)
	if spec.shell != "gosh" || spec.uinit != "" {
		t.Errorf("shell image shell = %q, uinit = %q, want gosh and none", spec.shell, spec.uinit)
	}
	for _, want := range []string{initPackage, umhctlPackage, "github.com/u-root/u-root/cmds/core/insmod", "github.com/u-root/u-root/cmds/core/gosh"} {
		found := false
		for _, c := range spec.commands {
			found = found || c == want
		}
		if !found {
			t.Errorf("shell image commands lack %s", want)
		}
	}
	if shellImage(false).recipe == spec.recipe {
		t.Error("the shell image recipe does not depend on umhctl")
	}
}
