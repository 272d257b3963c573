package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umhblob/umhblob/proto"
)

// session is run serving on a pair of pipes, seen from the module's side.
type session struct {
	t     testing.TB
	stdin *os.File // write end of the helper's stdin
	reply *os.File // read end of the helper's stdout
	log   *recordWriter
	done  chan error
}

// startT starts run on new pipes. Cleanup closes every pipe end, which
// also ends a run that is still reading.
func startT(t testing.TB) *session {
	t.Helper()

	inR, inW := pipeT(t)
	outR, outW := pipeT(t)
	s := &session{
		t:     t,
		stdin: inW,
		reply: outR,
		log:   &recordWriter{},
		done:  make(chan error, 1),
	}
	go func() { s.done <- run(inR, chunkWriter{outW}, newLogger(s.log)) }()
	return s
}

// chunkWriter passes each Write on in small pieces, as a pipe may take a
// large write, so frames from goroutines that do not serialize their
// writes would interleave. An *os.File alone would hide that, because it
// serializes Write calls on the same file.
type chunkWriter struct {
	w io.Writer
}

func (c chunkWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		m, err := c.w.Write(b[:min(len(b), 4096)])
		n += m
		if err != nil {
			return n, err
		}
		b = b[m:]
		runtime.Gosched()
	}
	return n, nil
}

func pipeT(t testing.TB) (*os.File, *os.File) {
	t.Helper()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatalf("os.Pipe: %v", err)
	}
	t.Cleanup(func() {
		r.Close()
		w.Close()
	})
	return r, w
}

func (s *session) sendT(h proto.Header, payload []byte) {
	s.t.Helper()

	if err := proto.WriteFrame(s.stdin, h, payload); err != nil {
		s.t.Fatalf("write %v request %d: %v", h.Type, h.ID, err)
	}
}

func (s *session) recvT() (proto.Header, []byte) {
	s.t.Helper()

	h, payload, err := proto.ReadFrame(s.reply)
	if err != nil {
		s.t.Fatalf("read reply: %v", err)
	}
	return h, payload
}

// roundTripT sends a request and reads its reply, which must pass
// proto.CheckReply and carry the request's ID.
func (s *session) roundTripT(t proto.Type, id uint64, payload []byte) (proto.Header, []byte) {
	s.t.Helper()

	s.sendT(proto.NewHeader(t, id, len(payload)), payload)
	h, reply := s.recvT()
	if err := proto.CheckReply(h, t); err != nil {
		s.t.Fatalf("reply to %v request: %v", t, err)
	}
	if h.ID != id {
		s.t.Fatalf("reply ID = %d, want %d", h.ID, id)
	}
	return h, reply
}

// waitT returns run's result after closing stdin.
func (s *session) waitT() error {
	s.t.Helper()

	s.stdin.Close()
	select {
	case err := <-s.done:
		return err
	case <-time.After(10 * time.Second):
		s.t.Fatal("run did not return within 10s")
		return nil
	}
}

// recordWriter stores each Write as one log record.
type recordWriter struct {
	mu      sync.Mutex
	records []string
}

func (w *recordWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.records = append(w.records, string(b))
	return len(b), nil
}

func (w *recordWriter) Records() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.records...)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func TestHello(t *testing.T) {
	s := startT(t)

	request := proto.Hello{MaxPayload: proto.MaxPayload}.Append(nil)
	h, payload := s.roundTripT(proto.TypeHello, 1, request)
	if h.Status != 0 {
		t.Fatalf("hello reply status = %d, want 0", h.Status)
	}
	hello, err := proto.DecodeHello(payload)
	if err != nil {
		t.Fatalf("DecodeHello: %v", err)
	}
	if hello.MaxPayload != proto.MaxPayload {
		t.Errorf("MaxPayload = %d, want %d", hello.MaxPayload, proto.MaxPayload)
	}
	if want := uint32(os.Getpid()); hello.PID != want {
		t.Errorf("PID = %d, want %d", hello.PID, want)
	}
	if err := s.waitT(); err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestPing(t *testing.T) {
	s := startT(t)

	h, payload := s.roundTripT(proto.TypePing, 2, nil)
	if h.Status != 0 {
		t.Errorf("ping reply status = %d, want 0", h.Status)
	}
	if len(payload) != 0 {
		t.Errorf("ping reply payload = %d bytes, want 0", len(payload))
	}
	if err := s.waitT(); err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestEcho(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 1 << 20, proto.MaxPayload} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := startT(t)
			want := randomBytes(n)

			h, got := s.roundTripT(proto.TypeEcho, uint64(n), want)
			if h.Status != 0 {
				t.Errorf("echo reply status = %d, want 0", h.Status)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("echo reply payload differs from request (%d and %d bytes)", len(got), len(want))
			}
			if err := s.waitT(); err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
}

func TestRejected(t *testing.T) {
	hello := proto.Hello{MaxPayload: proto.MaxPayload}.Append(nil)
	tests := []struct {
		name    string
		typ     proto.Type
		status  uint32
		payload []byte
		want    syscall.Errno
	}{
		{"unknown type", 0x63, 0, nil, syscall.EOPNOTSUPP},
		{"unknown type with payload", 0x7fff, 0, []byte("abc"), syscall.EOPNOTSUPP},
		{"ping reply", proto.TypePing | proto.TypeReply, 0, nil, syscall.EOPNOTSUPP},
		{"hello reply", proto.TypeHello | proto.TypeReply, 0, hello, syscall.EOPNOTSUPP},
		{"unknown type with status", 0x63, 5, nil, syscall.EOPNOTSUPP},
		{"ping with status", proto.TypePing, 5, nil, syscall.EINVAL},
		{"echo with status", proto.TypeEcho, 22, []byte("abc"), syscall.EINVAL},
		{"ping with payload", proto.TypePing, 0, []byte("x"), syscall.EINVAL},
		{"hello without payload", proto.TypeHello, 0, nil, syscall.EINVAL},
		{"hello short payload", proto.TypeHello, 0, hello[:4], syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startT(t)

			req := proto.NewHeader(tt.typ, 9, len(tt.payload))
			req.Status = tt.status
			s.sendT(req, tt.payload)
			h, payload := s.recvT()
			if h.Type != tt.typ|proto.TypeReply {
				t.Errorf("reply type = %v, want %v", h.Type, tt.typ|proto.TypeReply)
			}
			if h.ID != 9 {
				t.Errorf("reply ID = %d, want 9", h.ID)
			}
			if h.Status != uint32(tt.want) {
				t.Errorf("reply status = %d, want %d (%v)", h.Status, tt.want, tt.want)
			}
			if len(payload) != 0 {
				t.Errorf("reply payload = %d bytes, want 0", len(payload))
			}

			// A rejected request leaves the stream in step.
			if h, _ := s.roundTripT(proto.TypePing, 10, nil); h.Status != 0 {
				t.Errorf("ping after rejection: status = %d, want 0", h.Status)
			}
			if err := s.waitT(); err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
}

func TestRejectedLogLimit(t *testing.T) {
	s := startT(t)

	for id := range uint64(20) {
		s.roundTripT(0x63, id, nil)
	}
	if err := s.waitT(); err != nil {
		t.Fatalf("run: %v", err)
	}

	// Rejections 1, 2, 4, 8 and 16 are logged.
	records := s.log.Records()
	if len(records) != 5 {
		t.Fatalf("%d log records, want 5: %q", len(records), records)
	}
	if !strings.HasPrefix(records[0], "<3>umhblob_helper[") {
		t.Errorf("record = %q, want prefix <3>umhblob_helper[", records[0])
	}
	if want := "(16 rejected so far)\n"; !strings.HasSuffix(records[4], want) {
		t.Errorf("record = %q, want suffix %q", records[4], want)
	}
}

func TestConcurrent(t *testing.T) {
	const (
		senders  = 8
		requests = 40 // per sender
	)
	s := startT(t)

	// Payload sizes cross largePayload, so both slot kinds fill up.
	want := make(map[uint64][]byte)
	for id := range uint64(senders * requests) {
		want[id] = randomBytes(rand.IntN(3 * largePayload))
	}

	got := make(map[uint64][]byte)
	readReplies := func() error {
		for range len(want) {
			h, payload, err := proto.ReadFrame(s.reply)
			if err != nil {
				return err
			}
			if err := proto.CheckReply(h, proto.TypeEcho); err != nil {
				return err
			}
			if _, ok := got[h.ID]; ok {
				return fmt.Errorf("second reply with ID %d", h.ID)
			}
			got[h.ID] = payload
		}
		return nil
	}
	readErr := make(chan error, 1)
	go func() {
		err := readReplies()
		if err != nil {
			// Unblock the senders, because the helper stops reading
			// requests once its replies are not read.
			s.stdin.Close()
		}
		readErr <- err
	}()

	var writeMu sync.Mutex
	var wg sync.WaitGroup
	for sender := range uint64(senders) {
		wg.Go(func() {
			for i := range uint64(requests) {
				id := sender*requests + i
				writeMu.Lock()
				err := proto.WriteFrame(s.stdin, proto.NewHeader(proto.TypeEcho, id, 0), want[id])
				writeMu.Unlock()
				if errors.Is(err, os.ErrClosed) {
					return // the reply reader failed, or the test ended
				}
				if err != nil {
					t.Errorf("write request %d: %v", id, err)
					return
				}
			}
		})
	}

	select {
	case err := <-readErr:
		if err != nil {
			t.Fatalf("read replies: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("replies not read within 30s")
	}
	wg.Wait()
	for id, payload := range want {
		if !bytes.Equal(got[id], payload) {
			t.Errorf("reply %d: payload differs from request (%d and %d bytes)", id, len(got[id]), len(payload))
		}
	}
	if err := s.waitT(); err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestEOF(t *testing.T) {
	s := startT(t)

	err := s.waitT()
	if err != nil {
		t.Errorf("run = %v, want nil", err)
	}
	if code := exitCode(err); code != 0 {
		t.Errorf("exit status = %d, want 0", code)
	}
}

// TestEOFWaitsForReplies closes stdin while the replies are blocked on a
// full pipe, and run must still write every reply before it returns.
func TestEOFWaitsForReplies(t *testing.T) {
	// All requests fit in the large slots, so the helper reads them all
	// while their replies fill the pipe.
	const n = maxLargeInFlight - 1
	s := startT(t)

	payload := randomBytes(2 * largePayload)
	for id := range uint64(n) {
		s.sendT(proto.NewHeader(proto.TypeEcho, id, len(payload)), payload)
	}
	s.stdin.Close()

	select {
	case err := <-s.done:
		t.Fatalf("run = %v before the replies were read", err)
	case <-time.After(100 * time.Millisecond):
	}
	for range n {
		h, got := s.recvT()
		if h.Status != 0 {
			t.Errorf("reply %d: status = %d, want 0", h.ID, h.Status)
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("reply %d: payload differs from request (%d and %d bytes)", h.ID, len(got), len(payload))
		}
	}
	if err := s.waitT(); err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestMalformed(t *testing.T) {
	valid := proto.NewHeader(proto.TypePing, 1, 0)
	badVersion := valid
	badVersion.Version = 2
	oversized := proto.NewHeader(proto.TypeEcho, 1, proto.MaxPayload+1)
	truncated := proto.NewHeader(proto.TypeEcho, 1, 10)

	tests := []struct {
		name  string
		bytes []byte
		want  error
	}{
		{"bad magic", append([]byte("XXXX"), valid.Append(nil)[4:]...), proto.ErrBadMagic},
		{"bad version", badVersion.Append(nil), proto.ErrVersion},
		{"oversized length", oversized.Append(nil), proto.ErrTooLarge},
		{"short payload", append(truncated.Append(nil), "abc"...), io.ErrUnexpectedEOF},
		{"short header", valid.Append(nil)[:10], io.ErrUnexpectedEOF},
		{"after valid frame", append(valid.Append(nil), "garbage garbage garbage!"...), proto.ErrBadMagic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startT(t)

			if _, err := s.stdin.Write(tt.bytes); err != nil {
				t.Fatalf("write request: %v", err)
			}
			err := s.waitT()
			if !errors.Is(err, tt.want) {
				t.Errorf("run = %v, want %v", err, tt.want)
			}
			if code := exitCode(err); code != 2 {
				t.Errorf("exit status = %d, want 2", code)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	s := startT(t)

	s.reply.Close()
	s.sendT(proto.NewHeader(proto.TypePing, 1, 0), nil)

	// stdin stays open, so the failed write must end run on its own.
	var err error
	select {
	case err = <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of a failed write")
	}
	if !errors.Is(err, syscall.EPIPE) {
		t.Errorf("run = %v, want EPIPE", err)
	}
	if code := exitCode(err); code != 1 {
		t.Errorf("exit status = %d, want 1", code)
	}
}

func TestLogger(t *testing.T) {
	tag := fmt.Sprintf("umhblob_helper[%d]: ", os.Getpid())
	long := strings.Repeat("x", 2*maxRecord)
	tests := []struct {
		name string
		log  func(*logger)
		want string
	}{
		{"info", func(l *logger) { l.Infof("started, protocol %d", 1) }, "<6>" + tag + "started, protocol 1\n"},
		{"error", func(l *logger) { l.Errorf("read: %v", io.EOF) }, "<3>" + tag + "read: EOF\n"},
		{"newline", func(l *logger) { l.Infof("a\nb") }, "<6>" + tag + "a b\n"},
		{"truncated", func(l *logger) { l.Infof("%s", long) }, ("<6>" + tag + long)[:maxRecord-1] + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &recordWriter{}
			tt.log(newLogger(w))

			records := w.Records()
			if len(records) != 1 {
				t.Fatalf("%d records, want 1: %q", len(records), records)
			}
			if records[0] != tt.want {
				t.Errorf("record = %q, want %q", records[0], tt.want)
			}
		})
	}
}

func TestLoggerWithoutKmsg(t *testing.T) {
	l := newLogger(nil)
	l.Infof("dropped")
	l.Errorf("dropped")
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{fmt.Errorf("%w to ping request 1: %w", errWriteReply, syscall.EPIPE), 1},
		{fmt.Errorf("read request: %w", proto.ErrBadMagic), 2},
		{fmt.Errorf("read request: %w", io.ErrUnexpectedEOF), 2},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}
