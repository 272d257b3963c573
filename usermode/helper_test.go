package usermode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umhblob/umhblob/internal/prototest"
	"github.com/umhblob/umhblob/proto"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

// readProcT returns the contents of /proc/<pid>/<name>.
func readProcT(t testing.TB, pid int, name string) string {
	t.Helper()

	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestStartEnvironment checks what the helper inherits against what
// fork_usermode_driver gives it.
func TestStartEnvironment(t *testing.T) {
	h := startT(t, nil)
	pid := h.PID()

	if got := readProcT(t, pid, "cmdline"); got != DriverName+"\x00" {
		t.Errorf("helper cmdline = %q, want %q", got, DriverName+"\x00")
	}
	if got := readProcT(t, pid, "environ"); got != "" {
		t.Errorf("helper environ = %q, want empty", got)
	}

	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(cwd), "umhblob-helper-") {
		t.Errorf("helper cwd = %s, want a directory named umhblob-helper-*", cwd)
	}

	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	targets := make(map[string]string)
	for _, fd := range fds {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		targets[fd.Name()] = target
	}
	for _, fd := range []string{"0", "1"} {
		if !strings.HasPrefix(targets[fd], "pipe:") {
			t.Errorf("helper fd %s = %q, want a pipe", fd, targets[fd])
		}
	}
	// The Go runtime opens /dev/null as fd 2, which Start leaves closed.
	if targets["2"] != os.DevNull {
		t.Errorf("helper fd 2 = %q, want %s", targets["2"], os.DevNull)
	}

	// Field 6 of /proc/<pid>/stat is the session id; the command name in
	// field 2 may contain spaces, so count from its closing bracket.
	stat := readProcT(t, pid, "stat")
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if want := fmt.Sprint(pid); len(fields) < 4 || fields[3] != want {
		t.Errorf("helper stat fields after the name = %q, want session id %s", fields, want)
	}

	if err := h.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
	if _, err := os.Stat(cwd); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("helper directory after Close: %v, want not exist", err)
	}
}

func TestHandshake(t *testing.T) {
	h := startT(t, nil)

	if h.PID() <= 0 {
		t.Errorf("PID() = %d, want > 0", h.PID())
	}
	if got := h.MaxPayload(); got != proto.MaxPayload {
		t.Errorf("MaxPayload() = %d, want %d", got, proto.MaxPayload)
	}
}

func TestHandshakeFailure(t *testing.T) {
	tests := []struct {
		fault    string
		wantErr  error
		wantExit int // -1 when killed by the package
	}{
		{"no-hello", syscall.ECONNRESET, 3},
		{"hello-pid", proto.ErrReplyInvalid, -1},
		{"hello-status", proto.ErrReplyInvalid, -1},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			path := badHelperT(t, tt.fault)

			h, err := Start(context.Background(), path, nil)
			if err == nil {
				h.Close()
				t.Fatalf("Start(%s) = nil error", tt.fault)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Start(%s) = %v, want %v", tt.fault, err, tt.wantErr)
			}
			var exit *ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("Start(%s) = %v, want an *ExitError inside", tt.fault, err)
			}
			if got := exit.ExitCode(); got != tt.wantExit {
				t.Errorf("Start(%s) exit code = %d, want %d (%v)", tt.fault, got, tt.wantExit, err)
			}
		})
	}
}

func TestRequests(t *testing.T) {
	h := startT(t, nil)
	ctx := context.Background()

	t.Run("ping", func(t *testing.T) {
		r, err := h.Ping(ctx)
		if err != nil {
			t.Fatalf("Ping = %v", err)
		}
		if r.Header.Type != proto.TypePing|proto.TypeReply {
			t.Errorf("Ping reply type = %v, want %v", r.Header.Type, proto.TypePing|proto.TypeReply)
		}
		if r.Header.Status != 0 || len(r.Payload) != 0 {
			t.Errorf("Ping reply status %d, %d-byte payload, want 0 and 0", r.Header.Status, len(r.Payload))
		}
	})

	// Sizes around one pipe buffer (64 KiB) and up to the maximum.
	for _, n := range []int{0, 1, 4096, 64 << 10, 64<<10 + 1, 1 << 20, proto.MaxPayload} {
		t.Run(fmt.Sprintf("echo %d", n), func(t *testing.T) {
			want := randomBytes(n)

			r, err := h.Echo(ctx, want)
			if err != nil {
				t.Fatalf("Echo(%d bytes) = %v", n, err)
			}
			if r.Header.Type != proto.TypeEcho|proto.TypeReply {
				t.Errorf("Echo reply type = %v, want %v", r.Header.Type, proto.TypeEcho|proto.TypeReply)
			}
			if r.Header.Length != uint32(n) {
				t.Errorf("Echo reply length = %d, want %d", r.Header.Length, n)
			}
			if !bytes.Equal(r.Payload, want) {
				t.Errorf("Echo(%d bytes) payload differs from request", n)
			}
		})
	}

	if err := h.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
}

// TestDoVectors sends every request vector of proto/testdata/vectors.txt
// and expects the errno that the module's write(2) returns for it.
func TestDoVectors(t *testing.T) {
	h := startT(t, nil)

	for _, v := range prototest.ReadVectorsT(t) {
		if v.Check != "request" {
			continue
		}
		t.Run(v.Name, func(t *testing.T) {
			reply, err := h.Do(context.Background(), v.Frame)
			if v.Expected != "ok" {
				want := errnoByName(t, v.Expected)
				if !errors.Is(err, want) {
					t.Errorf("Do(%s) = %v, want %v", v.Name, err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Do(%s) = %v", v.Name, err)
			}
			req, _ := proto.DecodeHeader(v.Frame)
			got, err := proto.DecodeHeader(reply)
			if err != nil {
				t.Fatalf("decode reply: %v", err)
			}
			if got.ID != req.ID {
				t.Errorf("Do(%s) reply id = %#x, want the caller's %#x", v.Name, got.ID, req.ID)
			}
			if err := proto.CheckReply(got, req.Type); err != nil {
				t.Errorf("Do(%s) reply: %v", v.Name, err)
			}
			if req.Type == proto.TypeEcho && !bytes.Equal(reply[proto.HeaderSize:], v.Frame[proto.HeaderSize:]) {
				t.Errorf("Do(%s) reply payload = %x, want %x", v.Name, reply[proto.HeaderSize:], v.Frame[proto.HeaderSize:])
			}
		})
	}
}

func errnoByName(t testing.TB, name string) syscall.Errno {
	t.Helper()

	errnos := map[string]syscall.Errno{
		"EBADMSG":         syscall.EBADMSG,
		"EINVAL":          syscall.EINVAL,
		"EMSGSIZE":        syscall.EMSGSIZE,
		"EOPNOTSUPP":      syscall.EOPNOTSUPP,
		"EPROTO":          syscall.EPROTO,
		"EPROTONOSUPPORT": syscall.EPROTONOSUPPORT,
	}
	errno, ok := errnos[name]
	if !ok {
		t.Fatalf("unknown errno name %q", name)
	}
	return errno
}

func TestDoInvalid(t *testing.T) {
	h := startT(t, nil)
	ping := proto.NewHeader(proto.TypePing, 1, 0).Append(nil)
	tooLarge := proto.NewHeader(proto.TypeEcho, 1, proto.MaxPayload+1).Append(nil)

	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{"empty", nil, syscall.EINVAL},
		{"23 bytes", ping[:proto.HeaderSize-1], syscall.EINVAL},
		{"ping and a byte", append(bytes.Clone(ping), 0), syscall.EINVAL},
		{"length over maximum", tooLarge, syscall.EMSGSIZE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := h.Do(context.Background(), tt.frame); !errors.Is(err, tt.want) {
				t.Errorf("Do(%x) = %v, want %v", tt.frame, err, tt.want)
			}
		})
	}

	// A rejected request never reaches the helper.
	if _, err := h.Ping(context.Background()); err != nil {
		t.Errorf("Ping after invalid requests = %v", err)
	}
}

func TestDoKeepsCallerFrame(t *testing.T) {
	h := startT(t, nil)
	frame := proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho, 0xfeedface, 0), []byte("abc"))
	orig := bytes.Clone(frame)

	if _, err := h.Do(context.Background(), frame); err != nil {
		t.Fatalf("Do = %v", err)
	}
	if !bytes.Equal(frame, orig) {
		t.Errorf("Do changed the request frame to %x, want %x", frame, orig)
	}
}

func TestConcurrent(t *testing.T) {
	const (
		goroutines = 8
		requests   = 40 // per goroutine
	)
	h := startT(t, nil)

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range requests {
				if (g+i)%5 == 0 {
					if _, err := h.Ping(context.Background()); err != nil {
						t.Errorf("goroutine %d: Ping = %v", g, err)
						return
					}
					continue
				}
				// Sizes cross the helper's 64 KiB large-payload limit.
				want := randomBytes(rand.IntN(200 << 10))
				r, err := h.Echo(context.Background(), want)
				if err != nil {
					t.Errorf("goroutine %d: Echo(%d bytes) = %v", g, len(want), err)
					return
				}
				if !bytes.Equal(r.Payload, want) {
					t.Errorf("goroutine %d: Echo(%d bytes) payload differs from request", g, len(want))
				}
			}
		})
	}
	wg.Wait()

	if err := h.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
}

// TestMalformed writes bytes that are not a valid frame to the helper,
// which must exit with status 2, and checks how the package reports it.
func TestMalformed(t *testing.T) {
	valid := proto.NewHeader(proto.TypePing, 1, 0)
	badVersion := valid
	badVersion.Version = 2

	tests := []struct {
		name  string
		bytes []byte
	}{
		{"text", []byte("this is not a frame header")},
		{"bad magic", append([]byte("XXXX"), valid.Append(nil)[4:]...)},
		{"bad version", badVersion.Append(nil)},
		{"length over maximum", proto.NewHeader(proto.TypeEcho, 1, proto.MaxPayload+1).Append(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startT(t, nil)

			if err := h.WriteRaw(tt.bytes); err != nil {
				t.Fatalf("WriteRaw = %v", err)
			}
			checkExitCodeT(t, h.Wait(), 2)

			_, err := h.Ping(context.Background())
			var herr *HelperError
			if !errors.As(err, &herr) {
				t.Fatalf("Ping after malformed frame = %v, want *HelperError", err)
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("Ping after malformed frame = %v, want ECONNRESET", err)
			}
			if got := herr.Exit.ExitCode(); got != 2 {
				t.Errorf("HelperError exit code = %d, want 2", got)
			}
			if want := "exited with status 2"; !strings.Contains(err.Error(), want) {
				t.Errorf("Ping after malformed frame = %q, want it to contain %q", err, want)
			}
			checkExitCodeT(t, h.Close(), 2)
		})
	}
}

// TestTruncatedFrame closes the helper's stdin in the middle of a frame.
func TestTruncatedFrame(t *testing.T) {
	h := startT(t, nil)

	if err := h.WriteRaw(proto.NewHeader(proto.TypeEcho, 1, 10).Append(nil)); err != nil {
		t.Fatalf("WriteRaw = %v", err)
	}
	checkExitCodeT(t, h.Close(), 2)
}

func checkExitCodeT(t testing.TB, err error, want int) {
	t.Helper()

	var exit *ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("got %v, want an *ExitError with status %d", err, want)
	}
	if got := exit.ExitCode(); got != want {
		t.Errorf("ExitCode() = %d, want %d (%v)", got, want, err)
	}
}

// TestClose checks end of file on the helper's stdin: the helper exits
// with status 0, and later calls fail with ErrClosed.
func TestClose(t *testing.T) {
	h := startT(t, nil)

	if _, err := h.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("Close = %v, want nil", err)
	}
	if err := h.Wait(); err != nil {
		t.Errorf("Wait after Close = %v, want nil", err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if _, err := h.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after Close = %v, want ErrClosed", err)
	}
	if err := h.WriteRaw([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteRaw after Close = %v, want ErrClosed", err)
	}
}

// TestCloseKillsStoppedHelper checks that Close gives up on a helper that
// does not exit within ExitTimeout.
func TestCloseKillsStoppedHelper(t *testing.T) {
	h := startT(t, &Options{ExitTimeout: 200 * time.Millisecond})

	if err := syscall.Kill(h.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	err := h.Close()
	var exit *ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("Close = %v, want *ExitError", err)
	}
	if !exit.Status.Signaled() || exit.Status.Signal() != syscall.SIGKILL {
		t.Errorf("Close = %v, want killed by SIGKILL", err)
	}
}

// TestTimeout stops the helper, so a request times out and the helper is
// killed, as the module does.
func TestTimeout(t *testing.T) {
	h := startT(t, &Options{RequestTimeout: 200 * time.Millisecond})

	if err := syscall.Kill(h.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := h.Ping(context.Background())
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("Ping to a stopped helper = %v, want ETIMEDOUT", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Ping returned after %v, want about 200ms", elapsed)
	}

	err = h.Wait()
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Status.Signal() != syscall.SIGKILL {
		t.Errorf("Wait = %v, want killed by SIGKILL", err)
	}

	_, err = h.Ping(context.Background())
	if !errors.Is(err, syscall.ECONNRESET) || !errors.Is(err, syscall.ETIMEDOUT) {
		t.Errorf("Ping after timeout = %v, want ECONNRESET and ETIMEDOUT", err)
	}
}

func TestTimeoutSilentHelper(t *testing.T) {
	h := startPathT(t, badHelperT(t, "silent"), &Options{RequestTimeout: 200 * time.Millisecond})

	if _, err := h.Echo(context.Background(), []byte("abc")); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Errorf("Echo to a silent helper = %v, want ETIMEDOUT", err)
	}
}

// TestContextCancel checks that a caller that leaves does not hurt the
// helper: its late reply is dropped and the next request succeeds.
func TestContextCancel(t *testing.T) {
	h := startT(t, nil)

	if err := syscall.Kill(h.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := h.Echo(ctx, []byte("late")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Echo with an expired context = %v, want context.DeadlineExceeded", err)
	}
	if err := syscall.Kill(h.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	r, err := h.Echo(context.Background(), []byte("next"))
	if err != nil {
		t.Fatalf("Echo after a cancelled request = %v", err)
	}
	if string(r.Payload) != "next" {
		t.Errorf("Echo payload = %q, want %q", r.Payload, "next")
	}
	if err := h.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
}

func TestContextDoneBeforeSend(t *testing.T) {
	h := startT(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	if _, err := h.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ping with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestMaxInFlight(t *testing.T) {
	h := startPathT(t, badHelperT(t, "silent"), &Options{MaxInFlight: 2, RequestTimeout: 10 * time.Second})

	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { h.Ping(context.Background()) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for inFlight(h) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if _, err := h.Ping(context.Background()); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("Ping with 2 requests in flight = %v, want EBUSY", err)
	}
	h.Close()
	wg.Wait()
}

func inFlight(h *Helper) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.inFlight)
}

// TestBadReplies checks that replies that break the protocol fail the
// helper, and that every error names the cause.
func TestBadReplies(t *testing.T) {
	tests := []struct {
		fault    string
		want     error
		wantExit int // -1 when killed
	}{
		{"wrong-id", proto.ErrReplyInvalid, -1},
		{"wrong-type", proto.ErrReplyInvalid, -1},
		{"bad-magic", proto.ErrBadMagic, -1},
		// The helper exits after half a header, and only then does
		// the read see end of file.
		{"short-header", proto.ErrReplyInvalid, 3},
		{"exit-3", syscall.ECONNRESET, 3},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			h := startPathT(t, badHelperT(t, tt.fault), nil)

			_, err := h.Ping(context.Background())
			if !errors.Is(err, tt.want) {
				t.Errorf("Ping = %v, want %v", err, tt.want)
			}
			var herr *HelperError
			if !errors.As(err, &herr) {
				t.Fatalf("Ping = %v, want *HelperError", err)
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("Ping = %v, want ECONNRESET", err)
			}
			if got := herr.Exit.ExitCode(); got != tt.wantExit {
				t.Errorf("helper exit code = %d, want %d (%v)", got, tt.wantExit, err)
			}
		})
	}
}

// TestHelperKilled kills the helper from outside, as root or the OOM
// killer could, and checks that the signal is reported.
func TestHelperKilled(t *testing.T) {
	h := startT(t, nil)

	if err := syscall.Kill(h.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := h.Wait()
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Status.Signal() != syscall.SIGTERM {
		t.Fatalf("Wait = %v, want killed by SIGTERM", err)
	}

	_, err = h.Ping(context.Background())
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("Ping after kill = %v, want ECONNRESET", err)
	}
	if want := "killed by signal 15"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Ping after kill = %v, want it to contain %q", err, want)
	}
}

func TestExitErrorMessage(t *testing.T) {
	tests := []struct {
		status syscall.WaitStatus
		want   string
		code   int
	}{
		{0 << 8, "helper 7 exited with status 0 (end of file on its stdin)", 0},
		{1 << 8, "helper 7 exited with status 1 (writing a reply failed)", 1},
		{2 << 8, "helper 7 exited with status 2 (a malformed frame or a read error on its stdin)", 2},
		{42 << 8, "helper 7 exited with status 42", 42},
		{9, "helper 7 was killed by signal 9 (killed)", -1},
		{11 | 0x80, "helper 7 was killed by signal 11 (segmentation fault), core dumped", -1},
	}
	for _, tt := range tests {
		e := &ExitError{PID: 7, Status: tt.status}
		if got := e.Error(); got != tt.want {
			t.Errorf("ExitError{%#x}.Error() = %q, want %q", uint32(tt.status), got, tt.want)
		}
		if got := e.ExitCode(); got != tt.code {
			t.Errorf("ExitError{%#x}.ExitCode() = %d, want %d", uint32(tt.status), got, tt.code)
		}
	}
}

func TestStartMissingBinary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")

	if _, err := Start(context.Background(), path, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Start(%s) = %v, want os.ErrNotExist", path, err)
	}
}
