package proto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/umhblob/umhblob/internal/prototest"
)

// expectedDecodeError returns the sentinel that DecodeHeader must return
// for a whole header with these fields, checked in the order that the C
// decoder checks them.
func expectedDecodeError(h Header) error {
	switch {
	case h.Magic != Magic:
		return ErrBadMagic
	case h.Version != Version:
		return ErrVersion
	case h.Length > MaxPayload:
		return ErrTooLarge
	case h.Status > MaxStatus:
		return ErrStatus
	}
	return nil
}

func FuzzDecodeHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b)
		if len(b) < HeaderSize {
			if !errors.Is(err, ErrShortHeader) {
				t.Fatalf("DecodeHeader(%d bytes) = %v, want ErrShortHeader", len(b), err)
			}
			if h != (Header{}) {
				t.Fatalf("DecodeHeader(%d bytes) filled %+v, want a zero header", len(b), h)
			}
			return
		}

		// The header is filled in even on error, from the first 24 bytes.
		if got := h.Append(nil); !bytes.Equal(got, b[:HeaderSize]) {
			t.Fatalf("DecodeHeader(%x) re-encodes to %x", b[:HeaderSize], got)
		}
		want := expectedDecodeError(h)
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Fatalf("DecodeHeader(%x) = %v, want %v", b[:HeaderSize], err, want)
		}
		if err != nil {
			return
		}

		checkRequestInvariantsT(t, h, len(b))
		for _, typ := range []Type{TypeHello, TypePing, TypeEcho, h.Type &^ TypeReply} {
			checkReplyInvariantsT(t, h, typ)
		}
	})
}

func checkRequestInvariantsT(t *testing.T, h Header, frameLen int) {
	t.Helper()

	err := CheckRequest(h, frameLen)
	if err != nil {
		if !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("CheckRequest(%+v, %d) = %v, want EOPNOTSUPP or EINVAL", h, frameLen, err)
		}
		return
	}
	if h.Type != TypePing && h.Type != TypeEcho {
		t.Fatalf("CheckRequest(%+v, %d) accepted type %v", h, frameLen, h.Type)
	}
	if h.Status != 0 {
		t.Fatalf("CheckRequest(%+v, %d) accepted status %d", h, frameLen, h.Status)
	}
	if frameLen != HeaderSize+int(h.Length) {
		t.Fatalf("CheckRequest(%+v, %d) accepted a frame length that does not match", h, frameLen)
	}
	if h.Type == TypePing && h.Length != 0 {
		t.Fatalf("CheckRequest(%+v, %d) accepted a ping with a payload", h, frameLen)
	}
}

func checkReplyInvariantsT(t *testing.T, h Header, requestType Type) {
	t.Helper()

	err := CheckReply(h, requestType)
	if err != nil {
		if !errors.Is(err, ErrReplyInvalid) {
			t.Fatalf("CheckReply(%+v, %v) = %v, want ErrReplyInvalid", h, requestType, err)
		}
		return
	}
	if h.Type != requestType|TypeReply {
		t.Fatalf("CheckReply(%+v, %v) accepted type %v", h, requestType, h.Type)
	}
	if h.Status == 0 && requestType == TypeHello && h.Length != HelloSize {
		t.Fatalf("CheckReply(%+v, hello) accepted a %d-byte payload", h, h.Length)
	}
	if h.Status == 0 && requestType == TypePing && h.Length != 0 {
		t.Fatalf("CheckReply(%+v, ping) accepted a %d-byte payload", h, h.Length)
	}
}

// frameResult is what one ReadFrame call returned.
type frameResult struct {
	header  Header
	payload []byte
	err     error
}

// readAllFrames calls ReadFrame until it returns an error.
func readAllFrames(r io.Reader) []frameResult {
	var results []frameResult
	for {
		h, payload, err := ReadFrame(r)
		results = append(results, frameResult{h, payload, err})
		if err != nil {
			return results
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		results := readAllFrames(bytes.NewReader(b))
		pos := 0
		for i, r := range results[:len(results)-1] {
			n := HeaderSize + len(r.payload)
			if int(r.header.Length) != len(r.payload) {
				t.Fatalf("frame %d: header length %d, payload %d bytes", i, r.header.Length, len(r.payload))
			}
			if got := AppendFrame(nil, r.header, r.payload); !bytes.Equal(got, b[pos:pos+n]) {
				t.Fatalf("frame %d re-encodes to %x, read from %x", i, got, b[pos:pos+n])
			}
			pos += n
		}
		checkLastFrameT(t, b[pos:], results[len(results)-1])

		// Short reads change nothing.
		oneByte := readAllFrames(iotest.OneByteReader(bytes.NewReader(b)))
		if len(oneByte) != len(results) {
			t.Fatalf("ReadFrame read %d frames one byte at a time and %d at once", len(oneByte), len(results))
		}
		for i := range results {
			a, b := results[i], oneByte[i]
			if a.header != b.header || !bytes.Equal(a.payload, b.payload) || fmt.Sprint(a.err) != fmt.Sprint(b.err) {
				t.Fatalf("frame %d: ReadFrame = %+v at once, %+v one byte at a time", i, a, b)
			}
		}
	})
}

// checkLastFrameT checks the error that ended the stream, given the bytes
// that were left when the failing ReadFrame started.
func checkLastFrameT(t *testing.T, rest []byte, r frameResult) {
	t.Helper()

	if r.payload != nil {
		t.Fatalf("ReadFrame returned a %d-byte payload with error %v", len(r.payload), r.err)
	}
	switch {
	case len(rest) == 0:
		if r.err != io.EOF {
			t.Fatalf("ReadFrame at end of stream = %v, want io.EOF", r.err)
		}
		return
	case len(rest) < HeaderSize:
		if r.err != io.ErrUnexpectedEOF {
			t.Fatalf("ReadFrame with %d bytes left = %v, want io.ErrUnexpectedEOF", len(rest), r.err)
		}
		return
	}

	h, err := DecodeHeader(rest)
	if err != nil {
		if !errors.Is(r.err, expectedDecodeError(h)) {
			t.Fatalf("ReadFrame(%x) = %v, want %v", rest[:HeaderSize], r.err, err)
		}
		return
	}
	if len(rest) >= HeaderSize+int(h.Length) {
		t.Fatalf("ReadFrame(%x) = %v for a whole frame", rest[:HeaderSize], r.err)
	}
	if !errors.Is(r.err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFrame with %d of %d payload bytes = %v, want io.ErrUnexpectedEOF", len(rest)-HeaderSize, h.Length, r.err)
	}
}

// fuzzSeeds returns the seed inputs of both fuzz targets: every vector,
// and streams of several frames.
func fuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()

	seeds := make(map[string][]byte)
	var requests []byte
	for _, v := range prototest.ReadVectorsT(t) {
		seeds["vector-"+v.Name] = v.Frame
		if v.Check == "request" && v.Expected == "ok" {
			requests = append(requests, v.Frame...)
		}
	}
	echo := AppendFrame(nil, NewHeader(TypeEcho, 9, 0), []byte("payload"))
	seeds["stream-requests"] = requests
	seeds["stream-truncated-header"] = append(bytes.Clone(requests), echo[:HeaderSize-5]...)
	seeds["stream-truncated-payload"] = append(bytes.Clone(requests), echo[:len(echo)-2]...)
	seeds["stream-garbage-after-frame"] = append(bytes.Clone(echo), "garbage that is no header"...)
	return seeds
}

// TestFuzzSeeds checks the seed corpus files under testdata/fuzz, which
// go test runs as the seeds of FuzzDecodeHeader and FuzzReadFrame.
func TestFuzzSeeds(t *testing.T) {
	seeds := fuzzSeeds(t)
	prototest.CheckSeedsT(t, "FuzzDecodeHeader", seeds)
	prototest.CheckSeedsT(t, "FuzzReadFrame", seeds)
}
