package vm_test

// TestVMGDBBreakpoint needs a kernel built with the gdb variant and the
// module built against it:
//
//	UMHBLOB_GDB_KDIR    build directory of the gdb kernel, e.g. the
//	                    output of go run ./harness/cmd/kernel -variant gdb
//	UMHBLOB_GDB_MODULE  umhblob.ko built against UMHBLOB_GDB_KDIR
//
// Without them it skips.

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umhblob/umhblob/harness/vm"
)

// TestVMGDBBreakpoint boots the gdb kernel halted and lets the session's
// gdb script load the symbols. It then loads the module from the guest
// console and sends a request with umhctl. gdb must stop in umhb_write,
// the device's write handler, and show its source line.
func TestVMGDBBreakpoint(t *testing.T) {
	kdir := envPathT(t, "UMHBLOB_GDB_KDIR")
	module := envPathT(t, "UMHBLOB_GDB_MODULE")
	if kdir == "" || module == "" {
		t.Skip("UMHBLOB_GDB_KDIR or UMHBLOB_GDB_MODULE is not set; set them to a gdb variant kernel build and a module built against it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	var gdbOut syncBuffer
	session, err := vm.StartGDB(ctx, vm.Config{
		Kernel:   filepath.Join(kdir, "arch/x86/boot/bzImage"),
		Module:   module,
		Progress: logWriter{t},
	}, vm.GDBOptions{
		KDIR:     kdir,
		RunDir:   t.TempDir(),
		Batch:    true,
		Commands: []string{"break umhb_write", "continue", "bt 3", "info line *$pc"},
		Stdout:   &gdbOut,
		Stderr:   &gdbOut,
	})
	if err != nil {
		t.Fatalf("StartGDB: %v", err)
	}
	defer session.Stop()

	console := dialConsoleT(t, session.Console)
	// The shell may start after the first send, so the first command
	// is repeated until it runs.
	waitForT(t, console, "echo umhb''ready\n", "umhbready", true, 5*time.Minute)
	// insmod stops the guest in do_init_module while gdb loads the
	// module's symbols, so the shell prints its output only after that.
	waitForT(t, console, "insmod /umhblob.ko && echo umhb''loaded\n", "umhbloaded", false, 5*time.Minute)
	console.send(t, "umhctl ping\n")

	gdbDone := make(chan error, 1)
	go func() { gdbDone <- session.Wait() }()
	select {
	case err := <-gdbDone:
		if err != nil {
			t.Logf("gdb exited: %v", err)
		}
	case <-ctx.Done():
		t.Fatalf("gdb did not stop at umhb_write; gdb output:\n%s", gdbOut.String())
	}

	out := gdbOut.String()
	t.Logf("gdb output:\n%s", out)
	if !strings.Contains(out, "umhblob.ko") {
		t.Errorf("gdb output does not show lx-symbols loading umhblob.ko")
	}
	if !regexp.MustCompile(`Breakpoint \d+, umhb_write \(`).MatchString(out) {
		t.Errorf("gdb output has no stop at umhb_write")
	}
	if !regexp.MustCompile(`Line \d+ of "[^"]*umhblob_main\.c"`).MatchString(out) {
		t.Errorf("gdb output has no source line in umhblob_main.c for the stop")
	}
}

// consoleConn is the guest's serial console with everything read so far.
type consoleConn struct {
	conn net.Conn
	mu   sync.Mutex
	seen strings.Builder
}

func dialConsoleT(t testing.TB, socket string) *consoleConn {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("connect to the guest console: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &consoleConn{conn: conn}
	go func() {
		r := bufio.NewReader(conn)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			c.mu.Lock()
			c.seen.Write(buf[:n])
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return c
}

func (c *consoleConn) send(t testing.TB, s string) {
	t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		t.Fatalf("write to the guest console: %v", err)
	}
}

func (c *consoleConn) contains(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Contains(c.seen.String(), s)
}

// waitForT sends line, every 5 s with resend, until the console shows
// want. The quotes in line keep the shell's echo of the input from
// matching want.
func waitForT(t testing.TB, c *consoleConn, line, want string, resend bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	c.send(t, line)
	for !c.contains(want) {
		if time.Now().After(deadline) {
			c.mu.Lock()
			seen := c.seen.String()
			c.mu.Unlock()
			t.Fatalf("guest console did not show %q within %v; console:\n%s", want, timeout, seen)
		}
		time.Sleep(5 * time.Second)
		if resend && !c.contains(want) {
			c.send(t, line)
		}
	}
}

// syncBuffer is a strings.Builder safe for gdb's stdout and stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
