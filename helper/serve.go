package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/umhblob/umhblob/proto"
)

// Limits on requests in flight, that is read but not yet replied to, so a
// module that sends requests faster than it reads replies cannot grow the
// helper without bound. Payloads in memory stay under 4*4 MiB + 60*64 KiB,
// plus the frame being read and WriteFrame's copy of the one being written.
const (
	maxInFlight      = 64
	maxLargeInFlight = 4        // requests in flight over largePayload
	largePayload     = 64 << 10 // one pipe buffer
)

// errWriteReply is wrapped by every error from writing a reply to stdout.
var errWriteReply = errors.New("write reply")

// server serves the requests of one helper process.
type server struct {
	log *logger
	pid uint32

	slots      chan struct{} // a token per request in flight
	largeSlots chan struct{} // a token per large request in flight
	inFlight   sync.WaitGroup
	rejected   atomic.Uint64

	mu       sync.Mutex // serializes frames on out and guards writeErr
	out      io.Writer
	writeErr error
	failed   chan struct{} // closed when writeErr is set
}

// run reads requests from in, serves each in its own goroutine and writes
// the replies to out. At end of file on in between frames, it waits for
// the replies in flight and returns nil. A read error or malformed frame
// is returned at once, without waiting for replies in flight, because
// nothing after it in the stream can be trusted. The first failed write
// stops serving, and the error returned wraps errWriteReply.
func run(in io.Reader, out io.Writer, log *logger) error {
	return newServer(out, log).run(in)
}

func newServer(out io.Writer, log *logger) *server {
	return &server{
		log:        log,
		pid:        uint32(os.Getpid()),
		slots:      make(chan struct{}, maxInFlight),
		largeSlots: make(chan struct{}, maxLargeInFlight),
		out:        out,
		failed:     make(chan struct{}),
	}
}

// run serves the requests read from in, as the function run does. When it
// returns a read error, replies in flight are still being written, and
// s.inFlight.Wait waits for them.
func (s *server) run(in io.Reader) error {
	// Read in another goroutine, so that a failed write ends run even
	// while a read is blocked.
	readDone := make(chan error, 1)
	go func() { readDone <- s.readRequests(in) }()

	select {
	case err := <-readDone:
		if err != nil {
			return err
		}
		s.inFlight.Wait()
		return s.err()
	case <-s.failed:
		return s.err()
	}
}

func (s *server) readRequests(in io.Reader) error {
	for {
		req, payload, err := proto.ReadFrame(in)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read request: %w", err)
		}

		if !s.acquire(len(payload)) {
			return s.err()
		}
		s.inFlight.Add(1)
		go s.serve(req, payload)
	}
}

// acquire takes the slots for a request with an n-byte payload. It
// returns false, holding no slot, once a write has failed.
func (s *server) acquire(n int) bool {
	if n > largePayload {
		select {
		case s.largeSlots <- struct{}{}:
		case <-s.failed:
			return false
		}
	}

	select {
	case s.slots <- struct{}{}:
		return true
	case <-s.failed:
		if n > largePayload {
			<-s.largeSlots
		}
		return false
	}
}

func (s *server) release(n int) {
	<-s.slots
	if n > largePayload {
		<-s.largeSlots
	}
}

func (s *server) serve(req proto.Header, payload []byte) {
	defer s.inFlight.Done()
	defer s.release(len(payload))

	reply, status := s.respond(req, payload)
	if status != 0 {
		s.logRejected(req, status)
	}
	h := proto.NewHeader(req.Type|proto.TypeReply, req.ID, 0)
	h.Status = uint32(status)
	s.writeReply(req, h, reply)
}

// respond returns the reply payload for a request, or the errno for the
// reply's status when the request is rejected.
func (s *server) respond(req proto.Header, payload []byte) ([]byte, syscall.Errno) {
	switch {
	case !isRequestType(req.Type):
		// Unknown types, and replies sent back to the helper.
		return nil, syscall.EOPNOTSUPP
	case req.Status != 0:
		return nil, syscall.EINVAL
	case req.Type == proto.TypeHello:
		if _, err := proto.DecodeHello(payload); err != nil {
			return nil, syscall.EINVAL
		}
		hello := proto.Hello{MaxPayload: proto.MaxPayload, PID: s.pid}
		return hello.Append(nil), 0
	case req.Type == proto.TypePing && len(payload) != 0:
		return nil, syscall.EINVAL
	case req.Type == proto.TypePing:
		return nil, 0
	default:
		return payload, 0
	}
}

func isRequestType(t proto.Type) bool {
	return t == proto.TypeHello || t == proto.TypePing || t == proto.TypeEcho
}

// logRejected logs rejected requests number 1, 2, 4, 8 and so on, so a
// module that keeps sending bad requests cannot flood the kernel log.
func (s *server) logRejected(req proto.Header, status syscall.Errno) {
	n := s.rejected.Add(1)
	if n&(n-1) != 0 {
		return
	}
	s.log.Errorf("rejected %v request %d: %v (%d rejected so far)", req.Type, req.ID, status, n)
}

// writeReply writes one whole frame, or nothing once a write has failed,
// because after a partial frame the stream is out of step with the module.
func (s *server) writeReply(req, h proto.Header, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.writeErr != nil {
		return
	}
	if err := proto.WriteFrame(s.out, h, payload); err != nil {
		s.writeErr = fmt.Errorf("%w to %v request %d: %w", errWriteReply, req.Type, req.ID, err)
		close(s.failed)
	}
}

func (s *server) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeErr
}
