package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/umhblob/umhblob/internal/prototest"
	"github.com/umhblob/umhblob/proto"
)

// expectedReply returns the reply frame that the helper must write for a
// request, from the protocol's rules rather than from respond.
func expectedReply(req proto.Header, payload []byte) []byte {
	h := proto.NewHeader(req.Type|proto.TypeReply, req.ID, 0)
	var reply []byte
	switch {
	case req.Type != proto.TypeHello && req.Type != proto.TypePing && req.Type != proto.TypeEcho:
		h.Status = uint32(syscall.EOPNOTSUPP)
	case req.Status != 0:
		h.Status = uint32(syscall.EINVAL)
	case req.Type == proto.TypeHello && len(payload) != proto.HelloSize:
		h.Status = uint32(syscall.EINVAL)
	case req.Type == proto.TypeHello:
		reply = proto.Hello{MaxPayload: proto.MaxPayload, PID: uint32(os.Getpid())}.Append(nil)
	case req.Type == proto.TypePing && len(payload) != 0:
		h.Status = uint32(syscall.EINVAL)
	case req.Type == proto.TypeEcho:
		reply = payload
	}
	return proto.AppendFrame(nil, h, reply)
}

// FuzzServe feeds a byte stream to the helper's serve loop as its stdin.
// The helper must reply to every whole frame before the first malformed
// one with exactly one whole, valid reply frame, return the read error
// that ended the stream (nil at a clean end of file), and never panic.
func FuzzServe(f *testing.F) {
	// A payload over largePayload takes a large slot; too big for a file.
	f.Add(proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho, 1, 0), make([]byte, largePayload+1)))

	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		s := newServer(&out, newLogger(nil))
		err := s.run(bytes.NewReader(in))
		s.inFlight.Wait()

		// The frames and the error that the helper must see in the stream.
		want := make(map[string]int)
		r := bytes.NewReader(in)
		var readErr error
		for {
			req, payload, err := proto.ReadFrame(r)
			if err != nil {
				readErr = err
				break
			}
			want[string(expectedReply(req, payload))]++
		}

		if errors.Is(readErr, io.EOF) {
			if err != nil {
				t.Fatalf("run = %v after a stream of whole frames, want nil", err)
			}
		} else {
			if want := "read request: " + readErr.Error(); err == nil || err.Error() != want {
				t.Fatalf("run = %v, want %s", err, want)
			}
			if code := exitCode(err); code != 2 {
				t.Fatalf("exitCode(%v) = %d, want 2", err, code)
			}
		}

		for out.Len() > 0 {
			h, payload, err := proto.ReadFrame(&out)
			if err != nil {
				t.Fatalf("helper wrote something that is not a whole frame: %v", err)
			}
			frame := proto.AppendFrame(nil, h, payload)
			if want[string(frame)] == 0 {
				t.Fatalf("helper wrote reply %x, which answers no request of the stream", frame)
			}
			want[string(frame)]--
		}
		for frame, n := range want {
			if n != 0 {
				t.Fatalf("helper wrote no reply %x (%d missing)", frame, n)
			}
		}
	})
}

// fuzzSeeds returns the seed inputs of FuzzServe: every vector frame as
// a stream of its own, and streams of several frames.
func fuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()

	seeds := make(map[string][]byte)
	var all []byte
	for _, v := range prototest.ReadVectorsT(t) {
		seeds["vector-"+v.Name] = v.Frame
		if v.Check == "request" || v.Check == "header" && v.Expected == "ok" {
			all = append(all, v.Frame...)
		}
	}
	hello := proto.AppendFrame(nil, proto.NewHeader(proto.TypeHello, 1, 0), proto.Hello{MaxPayload: proto.MaxPayload}.Append(nil))
	session := append(bytes.Clone(hello), proto.AppendFrame(nil, proto.NewHeader(proto.TypePing, 2, 0), nil)...)
	session = append(session, proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho, 3, 0), []byte("payload"))...)

	seeds["stream-all-vectors"] = all
	seeds["stream-session"] = session
	seeds["stream-session-then-garbage"] = append(bytes.Clone(session), "garbage that is no header"...)
	seeds["stream-session-then-half-header"] = append(bytes.Clone(session), hello[:proto.HeaderSize/2]...)
	seeds["stream-duplicate-ids"] = append(bytes.Clone(session), session...)
	return seeds
}

// TestFuzzSeeds checks the seed corpus files under testdata/fuzz, which
// go test runs as the seeds of FuzzServe.
func TestFuzzSeeds(t *testing.T) {
	prototest.CheckSeedsT(t, "FuzzServe", fuzzSeeds(t))
}
