package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umhblob/umhblob/proto"
)

// buildT builds the helper the way the Makefile does and returns its path.
func buildT(t testing.TB) string {
	t.Helper()

	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "umhblob_helper")
	cmd := exec.Command(gotool, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// helperProcess is a helper binary started the way fork_usermode_driver
// starts it, seen from the module's side.
type helperProcess struct {
	t     testing.TB
	proc  *os.Process
	stdin *os.File // write end of the helper's stdin
	reply *os.File // read end of the helper's stdout
}

// startHelperT starts bin with an empty environment, argv[0]
// "umhblob_helper", its cwd in a new directory, and only fds 0 and 1 open,
// both pipes. Cleanup kills the helper if it still runs.
func startHelperT(t testing.TB, bin string) *helperProcess {
	t.Helper()

	inR, inW := pipeT(t)
	outR, outW := pipeT(t)
	// With fewer than three files, the child starts with fd 2 closed.
	proc, err := os.StartProcess(bin, []string{"umhblob_helper"}, &os.ProcAttr{
		Dir:   t.TempDir(),
		Env:   []string{},
		Files: []*os.File{inR, outW},
	})
	if err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	inR.Close()
	outW.Close()

	// After Wait, Kill returns os.ErrProcessDone and signals nothing.
	t.Cleanup(func() {
		if proc.Kill() == nil {
			proc.Wait()
		}
	})
	return &helperProcess{t: t, proc: proc, stdin: inW, reply: outR}
}

func (p *helperProcess) roundTripT(typ proto.Type, id uint64, payload []byte) (proto.Header, []byte) {
	p.t.Helper()

	if err := proto.WriteFrame(p.stdin, proto.NewHeader(typ, id, len(payload)), payload); err != nil {
		p.t.Fatalf("write %v request: %v", typ, err)
	}
	h, reply, err := proto.ReadFrame(p.reply)
	if err != nil {
		p.t.Fatalf("read reply to %v request: %v", typ, err)
	}
	if err := proto.CheckReply(h, typ); err != nil {
		p.t.Fatalf("reply to %v request: %v", typ, err)
	}
	if h.ID != id || h.Status != 0 {
		p.t.Fatalf("reply to %v request %d: ID %d, status %d", typ, id, h.ID, h.Status)
	}
	return h, reply
}

// waitT waits for the helper to exit and returns its wait status.
func (p *helperProcess) waitT() syscall.WaitStatus {
	p.t.Helper()

	timer := time.AfterFunc(10*time.Second, func() { p.proc.Kill() })
	defer timer.Stop()

	state, err := p.proc.Wait()
	if err != nil {
		p.t.Fatalf("wait for helper %d: %v", p.proc.Pid, err)
	}
	status := state.Sys().(syscall.WaitStatus)
	if status.Signaled() && status.Signal() == syscall.SIGKILL {
		p.t.Fatalf("helper %d did not exit within 10s", p.proc.Pid)
	}
	return status
}

func checkExitT(t testing.TB, status syscall.WaitStatus, want int) {
	t.Helper()

	if status.Signaled() {
		t.Fatalf("helper killed by signal %v, want exit status %d", status.Signal(), want)
	}
	if got := status.ExitStatus(); got != want {
		t.Errorf("helper exit status = %d, want %d", got, want)
	}
}

func TestBinary(t *testing.T) {
	bin := buildT(t)

	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatalf("elf.Open: %v", err)
		}
		defer f.Close()

		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("helper has a PT_INTERP segment, want a static binary")
			}
		}
		needed, err := f.DynString(elf.DT_NEEDED)
		if err != nil {
			t.Fatalf("read DT_NEEDED: %v", err)
		}
		if len(needed) != 0 {
			t.Errorf("helper needs shared libraries %q, want none", needed)
		}
		if info, err := os.Stat(bin); err == nil {
			t.Logf("helper binary: %d bytes", info.Size())
		}
	})

	t.Run("serve", func(t *testing.T) {
		kmsg := openKmsgReaderT(t)
		p := startHelperT(t, bin)

		_, payload := p.roundTripT(proto.TypeHello, 1, proto.Hello{MaxPayload: proto.MaxPayload}.Append(nil))
		hello, err := proto.DecodeHello(payload)
		if err != nil {
			t.Fatalf("DecodeHello: %v", err)
		}
		if hello.PID != uint32(p.proc.Pid) {
			t.Errorf("hello PID = %d, want %d", hello.PID, p.proc.Pid)
		}
		checkStderrT(t, p.proc.Pid)

		want := randomBytes(1 << 20)
		if _, got := p.roundTripT(proto.TypeEcho, 2, want); !bytes.Equal(got, want) {
			t.Errorf("echo reply payload differs from request (%d and %d bytes)", len(got), len(want))
		}

		p.stdin.Close()
		checkExitT(t, p.waitT(), 0)
		if _, _, err := proto.ReadFrame(p.reply); !errors.Is(err, io.EOF) {
			t.Errorf("read after exit = %v, want EOF", err)
		}
		kmsg.checkT(t, p.proc.Pid, "started, protocol 1", "exiting: end of file on stdin")
	})

	t.Run("malformed", func(t *testing.T) {
		kmsg := openKmsgReaderT(t)
		p := startHelperT(t, bin)

		if _, err := p.stdin.Write([]byte("this is not a frame header")); err != nil {
			t.Fatalf("write: %v", err)
		}
		checkExitT(t, p.waitT(), 2)
		kmsg.checkT(t, p.proc.Pid, "exiting with status 2: read request: invalid frame magic")
	})

	// When the module closes its end of the helper's stdout, the write
	// fails with EPIPE and the helper must exit 1, not die of SIGPIPE.
	t.Run("broken pipe", func(t *testing.T) {
		p := startHelperT(t, bin)

		p.reply.Close()
		if err := proto.WriteFrame(p.stdin, proto.NewHeader(proto.TypePing, 1, 0), nil); err != nil {
			t.Fatalf("write ping request: %v", err)
		}
		checkExitT(t, p.waitT(), 1)
	})
}

// checkStderrT checks that the Go runtime opened /dev/null as fd 2, which
// the kernel leaves closed.
func checkStderrT(t testing.TB, pid int) {
	t.Helper()

	target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/2", pid))
	if err != nil {
		t.Errorf("read helper fd 2: %v", err)
		return
	}
	if target != os.DevNull {
		t.Errorf("helper fd 2 = %s, want %s", target, os.DevNull)
	}
}

// kmsgReader reads the kernel log records written after it was opened.
// A zero fd means /dev/kmsg was not readable, and checks are skipped.
type kmsgReader struct {
	fd int
}

func openKmsgReaderT(t testing.TB) *kmsgReader {
	t.Helper()

	// Raw syscalls, because an os.File would wait for a record where the
	// read here must return EAGAIN at the end of the log.
	fd, err := syscall.Open("/dev/kmsg", syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Logf("kernel log checks skipped: open /dev/kmsg: %v", err)
		return &kmsgReader{}
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if _, err := syscall.Seek(fd, 0, io.SeekEnd); err != nil {
		t.Fatalf("seek /dev/kmsg: %v", err)
	}
	return &kmsgReader{fd: fd}
}

// checkT checks that the helper with this pid logged a record that starts
// with each of the wanted messages.
func (r *kmsgReader) checkT(t testing.TB, pid int, want ...string) {
	t.Helper()

	if r.fd == 0 {
		return
	}
	tag := fmt.Sprintf("umhblob_helper[%d]: ", pid)
	var logged []string
	buf := make([]byte, 8192)
	for {
		n, err := syscall.Read(r.fd, buf)
		if errors.Is(err, syscall.EPIPE) {
			continue // records overwritten since the last read
		}
		if err != nil {
			break // EAGAIN at the end of the log
		}
		// A record is "prio,seq,time,flags;message\n" and continuation lines.
		_, msg, ok := strings.Cut(string(buf[:n]), ";")
		msg, _, _ = strings.Cut(msg, "\n")
		if ok && strings.HasPrefix(msg, tag) {
			logged = append(logged, strings.TrimPrefix(msg, tag))
		}
	}

	for _, w := range want {
		found := false
		for _, msg := range logged {
			found = found || strings.HasPrefix(msg, w)
		}
		if !found {
			t.Errorf("no kernel log record %q from helper %d (records: %q)", w, pid, logged)
		}
	}
}
