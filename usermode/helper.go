package usermode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/umhblob/umhblob/proto"
)

// DriverName is the helper's argv[0], the driver name the module passes
// to fork_usermode_driver.
const DriverName = "umhblob_helper"

// Options tune a helper started by Start. A zero field takes its default.
type Options struct {
	// RequestTimeout is how long a request waits for its reply. A helper
	// that misses it is killed, as the module kills it. The default, 5s,
	// is the default of the module's request_timeout_ms parameter.
	RequestTimeout time.Duration
	// StartTimeout is the time the helper has to reply to the handshake.
	// The default, 10s, is the default of the module's start_timeout_ms.
	StartTimeout time.Duration
	// ExitTimeout is how long the helper has to exit after end of file
	// on its stdin (Close) or on its stdout, before it is killed.
	// The default is 5s.
	ExitTimeout time.Duration
	// MaxInFlight is the number of requests in flight above which a new
	// request fails with EBUSY. The default, 256, is the module's limit.
	MaxInFlight int
}

func (o *Options) withDefaults() Options {
	var opts Options
	if o != nil {
		opts = *o
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.ExitTimeout <= 0 {
		opts.ExitTimeout = 5 * time.Second
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 256
	}
	return opts
}

// Helper is a running helper process, seen from the module's side of the
// pipes. Its methods may be called from many goroutines at once. A Helper
// does not restart a helper that failed: every later request returns the
// *HelperError that describes the failure.
type Helper struct {
	opts       Options
	proc       *os.Process
	dir        string   // the helper's working directory, removed by Close
	stdin      *os.File // write end of the helper's stdin
	stdout     *os.File // read end of the helper's stdout
	maxPayload uint32   // smaller of proto.MaxPayload and the helper's
	callerIDs  atomic.Uint64

	sendq chan sendItem

	mu       sync.Mutex // guards the fields below
	lastID   uint64
	inFlight map[uint64]*call
	closed   bool
	failure  *HelperError // set before failed is closed
	status   syscall.WaitStatus
	waitErr  error // from os.Process.Wait; both set before exited is closed

	failOnce   sync.Once
	failed     chan struct{}
	exited     chan struct{}
	readerDone chan struct{}
	writerDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// call is a request in flight.
type call struct {
	id        uint64
	typ       proto.Type
	reply     chan []byte // receives the reply frame, with room for it so the reader never blocks
	abandoned bool        // under Helper.mu: the caller left, so drop the reply
}

// sendItem is a unit of work for the goroutine that writes to the helper's
// stdin: a request frame, raw bytes from WriteRaw, or end of file.
type sendItem struct {
	frame []byte
	done  chan error // receives the result of a raw write
	eof   bool
}

// errStdoutEOF is the failure when the helper closes its stdout, which it
// does only by exiting.
var errStdoutEOF = errors.New("end of file on its stdout")

// Start runs the helper binary at path as the kernel runs a user mode
// driver, and exchanges HELLO frames with it. The helper gets argv[0]
// DriverName, an empty environment, a new private directory as its
// working directory, a new session with no controlling terminal, and
// only two open files: fd 0 and fd 1, pipes to and from the caller. Fd 2
// stays closed, so the Go runtime in the helper opens /dev/null there as
// it does under the kernel. Unlike the kernel's helper, this one runs
// with the caller's user and capabilities.
//
// ctx bounds the handshake only. The handshake checks the reply's
// protocol version, that the helper reports the pid it was started with,
// and the largest payload it accepts.
func Start(ctx context.Context, path string, opts *Options) (*Helper, error) {
	dir, err := os.MkdirTemp("", "umhblob-helper-")
	if err != nil {
		return nil, fmt.Errorf("start helper: %w", err)
	}
	h, err := startProcess(path, dir, opts.withDefaults())
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}

	if err := h.handshake(ctx); err != nil {
		h.fail(fmt.Errorf("handshake: %w", err), true)
		<-h.failed
		h.Close()
		return nil, fmt.Errorf("start helper %s: %w", path, h.failureErr())
	}
	return h, nil
}

func startProcess(path, dir string, opts Options) (*Helper, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start helper: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("start helper: %w", err)
	}

	// os.StartProcess passes exactly these files, as fds 0 and 1, and a
	// non-nil empty Env keeps it from passing the caller's environment.
	proc, err := os.StartProcess(path, []string{DriverName}, &os.ProcAttr{
		Dir:   dir,
		Env:   []string{},
		Files: []*os.File{inR, outW},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start helper: %w", err)
	}

	h := &Helper{
		opts:       opts,
		proc:       proc,
		dir:        dir,
		stdin:      inW,
		stdout:     outR,
		maxPayload: proto.MaxPayload,
		sendq:      make(chan sendItem, opts.MaxInFlight),
		inFlight:   make(map[uint64]*call),
		failed:     make(chan struct{}),
		exited:     make(chan struct{}),
		readerDone: make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	go h.waitExit()
	go h.readReplies()
	go h.writeRequests()
	return h, nil
}

// PID returns the helper's process id.
func (h *Helper) PID() int {
	return h.proc.Pid
}

// MaxPayload returns the largest request payload that the helper accepts.
func (h *Helper) MaxPayload() int {
	return int(h.maxPayload)
}

// Ping sends a ping request.
func (h *Helper) Ping(ctx context.Context) (Reply, error) {
	return request(ctx, h.Do, proto.TypePing, h.callerIDs.Add(1), nil)
}

// Echo sends an echo request.
func (h *Helper) Echo(ctx context.Context, payload []byte) (Reply, error) {
	return request(ctx, h.Do, proto.TypeEcho, h.callerIDs.Add(1), payload)
}

// Do checks frame as the module's write(2) does, sends a copy with an id
// of its own, and returns the reply frame with the caller's id restored.
// A caller whose ctx ends first gets ctx's error and the late reply is
// dropped. A request that times out kills the helper and returns an
// error that wraps syscall.ETIMEDOUT. Once the helper has failed, every
// request returns its *HelperError.
func (h *Helper) Do(ctx context.Context, frame []byte) ([]byte, error) {
	req, err := checkRequestFrame(frame, h.maxPayload)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	c, err := h.submit(ctx, req.Type, bytes.Clone(frame))
	if err != nil {
		return nil, err
	}
	reply, err := h.wait(ctx, c, h.opts.RequestTimeout)
	if err != nil {
		return nil, err
	}
	setFrameID(reply, req.ID)
	return reply, nil
}

// WriteRaw writes b to the helper's stdin as it is, between two request
// frames. It exists to test how the helper handles malformed input: a
// helper that reads anything but whole valid frames exits with status 2,
// and the requests in flight then fail with a *HelperError.
func (h *Helper) WriteRaw(b []byte) error {
	if err := h.checkOpen(); err != nil {
		return err
	}
	done := make(chan error, 1)
	select {
	case h.sendq <- sendItem{frame: bytes.Clone(b), done: done}:
	case <-h.writerDone:
		return h.failureErr()
	}
	select {
	case err := <-done:
		return err
	case <-h.writerDone:
		select {
		case err := <-done:
			return err
		default:
			return h.failureErr()
		}
	}
}

// Wait waits for the helper to exit. It returns nil after exit status 0,
// and an *ExitError otherwise.
func (h *Helper) Wait() error {
	<-h.exited
	return h.exitErr()
}

// Close closes the helper's stdin after the requests already sent, which
// makes the helper write their replies and exit with status 0. It kills a
// helper that has not exited within Options.ExitTimeout, and removes the
// helper's working directory. It returns what Wait returns, joined with
// any error from removing the directory.
func (h *Helper) Close() error {
	h.closeOnce.Do(func() { h.closeErr = h.close() })
	return h.closeErr
}

func (h *Helper) close() error {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()

	timer := time.NewTimer(h.opts.ExitTimeout)
	defer timer.Stop()
	select {
	case h.sendq <- sendItem{eof: true}:
		select {
		case <-h.exited:
		case <-timer.C:
			h.proc.Kill()
		}
	case <-h.writerDone:
	case <-timer.C:
		h.proc.Kill()
	}
	<-h.exited
	<-h.readerDone
	<-h.writerDone
	h.stdin.Close()
	h.stdout.Close()

	err := h.exitErr()
	if rmErr := os.RemoveAll(h.dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("remove helper directory: %w", rmErr))
	}
	return err
}

func (h *Helper) checkOpen() error {
	h.mu.Lock()
	defer h.mu.Unlock()

	if h.closed {
		return ErrClosed
	}
	if h.failure != nil {
		return h.failure
	}
	return nil
}

// handshake sends HELLO and checks the reply, as the module does first
// with every helper it starts.
func (h *Helper) handshake(ctx context.Context) error {
	ours := proto.Hello{MaxPayload: proto.MaxPayload}
	frame := proto.AppendFrame(nil, proto.NewHeader(proto.TypeHello, 0, 0), ours.Append(nil))
	c, err := h.submit(ctx, proto.TypeHello, frame)
	if err != nil {
		return err
	}
	reply, err := h.wait(ctx, c, h.opts.StartTimeout)
	if err != nil {
		return err
	}

	// wait checked the reply type, and the length of a zero-status reply.
	hdr, _ := proto.DecodeHeader(reply)
	if hdr.Status != 0 {
		return fmt.Errorf("%w: hello reply has status %d (%v)", proto.ErrReplyInvalid, hdr.Status, syscall.Errno(hdr.Status))
	}
	theirs, err := proto.DecodeHello(reply[proto.HeaderSize:])
	if err != nil {
		return err
	}
	if theirs.PID != uint32(h.proc.Pid) {
		return fmt.Errorf("%w: hello reply has pid %d, want %d", proto.ErrReplyInvalid, theirs.PID, h.proc.Pid)
	}
	h.maxPayload = min(theirs.MaxPayload, proto.MaxPayload)
	return nil
}

// submit gives frame the next id and queues it for the writer.
func (h *Helper) submit(ctx context.Context, typ proto.Type, frame []byte) (*call, error) {
	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		return nil, ErrClosed
	case h.failure != nil:
		h.mu.Unlock()
		return nil, h.failure
	case len(h.inFlight) >= h.opts.MaxInFlight:
		h.mu.Unlock()
		return nil, fmt.Errorf("%d requests in flight: %w", h.opts.MaxInFlight, syscall.EBUSY)
	}
	h.lastID++
	c := &call{id: h.lastID, typ: typ, reply: make(chan []byte, 1)}
	setFrameID(frame, c.id)
	h.inFlight[c.id] = c
	h.mu.Unlock()

	select {
	case h.sendq <- sendItem{frame: frame}:
		return c, nil
	case <-h.failed:
		h.forget(c)
		return nil, h.failureErr()
	case <-ctx.Done():
		h.forget(c)
		return nil, ctx.Err()
	}
}

// wait waits for the reply to c.
func (h *Helper) wait(ctx context.Context, c *call, timeout time.Duration) ([]byte, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()

	select {
	case reply := <-c.reply:
		return reply, nil
	case <-h.failed:
		// The reply may have arrived just before the failure.
		select {
		case reply := <-c.reply:
			return reply, nil
		default:
			return nil, h.failureErr()
		}
	case <-ctx.Done():
		h.abandon(c)
		return nil, fmt.Errorf("%v request %d: %w", c.typ, c.id, ctx.Err())
	case <-timer.C:
		h.abandon(c)
		err := fmt.Errorf("no reply to %v request %d within %v: %w", c.typ, c.id, timeout, syscall.ETIMEDOUT)
		h.fail(err, true)
		return nil, err
	}
}

// abandon marks c so that its late reply is dropped. The call stays in
// flight, because the helper may still reply to it.
func (h *Helper) abandon(c *call) {
	h.mu.Lock()
	c.abandoned = true
	h.mu.Unlock()
}

// forget removes c, which never reached the writer.
func (h *Helper) forget(c *call) {
	h.mu.Lock()
	delete(h.inFlight, c.id)
	h.mu.Unlock()
}

// writeRequests writes queued frames to the helper's stdin, one whole
// frame at a time, until end of file is queued or the helper fails.
func (h *Helper) writeRequests() {
	defer close(h.writerDone)

	for {
		var item sendItem
		select {
		case item = <-h.sendq:
		case <-h.failed:
			return
		}
		if item.eof {
			h.stdin.Close()
			return
		}

		_, err := h.stdin.Write(item.frame)
		if item.done != nil {
			item.done <- err
		}
		if err != nil {
			h.fail(fmt.Errorf("write request: %w", err), true)
			return
		}
	}
}

// readReplies reads reply frames and hands each to its caller, until end
// of file or a reply that breaks the protocol.
func (h *Helper) readReplies() {
	defer close(h.readerDone)

	for {
		err := h.readReply()
		if errors.Is(err, errStdoutEOF) {
			h.fail(err, false)
			return
		}
		if err != nil {
			h.fail(err, true)
			return
		}
	}
}

func (h *Helper) readReply() error {
	var raw [proto.HeaderSize]byte
	n, err := io.ReadFull(h.stdout, raw[:])
	switch {
	case errors.Is(err, io.EOF):
		return errStdoutEOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: reply header ends after %d bytes", proto.ErrReplyInvalid, n)
	case err != nil:
		return fmt.Errorf("read reply: %w", err)
	}

	hdr, err := proto.DecodeHeader(raw[:])
	if err != nil {
		return fmt.Errorf("invalid reply header: %w", err)
	}
	c, err := h.claim(hdr)
	if err != nil {
		return err
	}

	frame := make([]byte, proto.HeaderSize+int(hdr.Length))
	copy(frame, raw[:])
	if _, err := io.ReadFull(h.stdout, frame[proto.HeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %d-byte payload of reply %d: %w", hdr.Length, hdr.ID, err)
	}

	h.mu.Lock()
	abandoned := c.abandoned
	h.mu.Unlock()
	if !abandoned {
		c.reply <- frame
	}
	return nil
}

// claim finds the call that a reply belongs to, checks the reply against
// it and removes the call from flight.
func (h *Helper) claim(hdr proto.Header) (*call, error) {
	h.mu.Lock()
	defer h.mu.Unlock()

	c, ok := h.inFlight[hdr.ID]
	if !ok {
		return nil, fmt.Errorf("%w: %v reply to request %d, which is not in flight", proto.ErrReplyInvalid, hdr.Type, hdr.ID)
	}
	if err := proto.CheckReply(hdr, c.typ); err != nil {
		return nil, fmt.Errorf("reply to request %d: %w", hdr.ID, err)
	}
	delete(h.inFlight, hdr.ID)
	return c, nil
}

func (h *Helper) waitExit() {
	state, err := h.proc.Wait()

	h.mu.Lock()
	if err != nil {
		h.waitErr = fmt.Errorf("wait for helper %d: %w", h.proc.Pid, err)
	} else {
		h.status = state.Sys().(syscall.WaitStatus)
	}
	h.mu.Unlock()
	close(h.exited)
}

// exitErr returns nil for exit status 0, or how the helper ended. The
// helper must have exited.
func (h *Helper) exitErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()

	if h.waitErr != nil {
		return h.waitErr
	}
	if h.status.Exited() && h.status.ExitStatus() == 0 {
		return nil
	}
	return &ExitError{PID: h.proc.Pid, Status: h.status}
}

// fail gives the helper up for cause: the first call kills the helper if
// kill is set, and otherwise gives it Options.ExitTimeout to exit before
// killing it. When the helper has exited, every request in flight, and
// every later one, fails with a *HelperError.
func (h *Helper) fail(cause error, kill bool) {
	h.failOnce.Do(func() {
		if kill {
			h.proc.Kill()
		}
		go h.finishFailure(cause)
	})
}

func (h *Helper) finishFailure(cause error) {
	timer := time.NewTimer(h.opts.ExitTimeout)
	defer timer.Stop()
	select {
	case <-h.exited:
	case <-timer.C:
		h.proc.Kill()
		<-h.exited
	}

	h.mu.Lock()
	h.failure = &HelperError{
		PID:  h.proc.Pid,
		Err:  cause,
		Exit: &ExitError{PID: h.proc.Pid, Status: h.status},
	}
	h.mu.Unlock()
	close(h.failed)
}

// failureErr returns the *HelperError, or ErrClosed when the helper has
// not failed, which means the writer stopped because of Close.
func (h *Helper) failureErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()

	if h.failure == nil {
		return ErrClosed
	}
	return h.failure
}
