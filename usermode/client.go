// Package usermode sends umhblob requests either to the helper binary,
// run as an ordinary child process, or to the module through
// /dev/umhblob.
//
// Start runs the helper the way the kernel's fork_usermode_driver runs it
// and takes the module's side of the protocol: the handshake, request ids,
// many requests in flight, a timeout per request, and a report of how the
// helper exited. OpenDevice opens the module's device. Both return a
// Client, so the same code runs in user space and on a kernel with the
// module loaded.
package usermode

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/umhblob/umhblob/proto"
)

// Client sends requests the way user space sends them to /dev/umhblob.
// Its methods may be called from many goroutines at once.
type Client interface {
	// Ping sends a ping request and returns its reply.
	Ping(ctx context.Context) (Reply, error)
	// Echo sends an echo request and returns its reply, whose payload
	// equals the request's when the helper works.
	Echo(ctx context.Context, payload []byte) (Reply, error)
	// Do sends one whole request frame and returns the whole reply
	// frame, which carries the request's id. An invalid request is
	// rejected with the errno the module's write(2) returns.
	Do(ctx context.Context, frame []byte) ([]byte, error)
	// Close releases the client. Later calls of the other methods
	// return ErrClosed, and a second Close returns what the first did,
	// or nil.
	Close() error
}

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("client is closed")

// Reply is a decoded reply frame.
type Reply struct {
	Header  proto.Header
	Payload []byte
}

// request sends a request of type typ through do and decodes the reply.
// A reply with a nonzero status is returned together with an error that
// wraps the status as a syscall.Errno.
func request(ctx context.Context, do func(context.Context, []byte) ([]byte, error), typ proto.Type, id uint64, payload []byte) (Reply, error) {
	frame := proto.AppendFrame(make([]byte, 0, proto.HeaderSize+len(payload)), proto.NewHeader(typ, id, 0), payload)
	raw, err := do(ctx, frame)
	if err != nil {
		return Reply{}, err
	}
	return decodeReply(raw, typ, id)
}

// decodeReply decodes and checks a whole reply frame to request id.
func decodeReply(frame []byte, typ proto.Type, id uint64) (Reply, error) {
	h, err := proto.DecodeHeader(frame)
	if err != nil {
		return Reply{}, fmt.Errorf("decode reply: %w", err)
	}
	if len(frame) != proto.HeaderSize+int(h.Length) {
		return Reply{}, fmt.Errorf("%w: %d-byte reply frame for a %d-byte payload", proto.ErrFrameLength, len(frame), h.Length)
	}
	if err := proto.CheckReply(h, typ); err != nil {
		return Reply{}, err
	}
	if h.ID != id {
		return Reply{}, fmt.Errorf("%w: reply id %d, want %d", proto.ErrReplyInvalid, h.ID, id)
	}

	r := Reply{Header: h, Payload: frame[proto.HeaderSize:]}
	if h.Status != 0 {
		return r, fmt.Errorf("%v request %d failed with status %d: %w", typ, id, h.Status, syscall.Errno(h.Status))
	}
	return r, nil
}

// checkRequestFrame runs the checks that the module's write(2) runs on a
// request frame, and rejects a payload over maxPayload with EMSGSIZE.
func checkRequestFrame(frame []byte, maxPayload uint32) (proto.Header, error) {
	h, err := proto.DecodeHeader(frame)
	if err != nil {
		return h, fmt.Errorf("invalid request: %w", err)
	}
	if err := proto.CheckRequest(h, len(frame)); err != nil {
		return h, fmt.Errorf("invalid request: %w", err)
	}
	if h.Length > maxPayload {
		return h, fmt.Errorf("invalid request: %w: %d bytes, the helper accepts %d", proto.ErrTooLarge, h.Length, maxPayload)
	}
	return h, nil
}

// setFrameID overwrites the id in the header at the start of frame, which
// must hold a whole header.
func setFrameID(frame []byte, id uint64) {
	h, _ := proto.DecodeHeader(frame)
	h.ID = id
	h.Append(frame[:0])
}

var (
	_ Client = (*Helper)(nil)
	_ Client = (*Device)(nil)
)
