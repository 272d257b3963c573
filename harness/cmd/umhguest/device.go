package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/proto"
)

const devicePath = "/dev/umhblob"

// device is an open /dev/umhblob. It uses raw file descriptors instead of
// os.File, so every request is exactly one write(2), every errno reaches
// the caller unchanged, and the Go runtime never switches the fd to
// non-blocking mode.
type device struct {
	fd  int
	buf []byte // receives reply frames, large enough for the largest one
}

func openDevice() (*device, error) {
	fd, err := unix.Open(devicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", devicePath, err)
	}
	return &device{fd: fd}, nil
}

// Close closes the file. Later calls do nothing, so a deferred Close is
// safe after an explicit one and never closes a reused descriptor.
func (d *device) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// write writes frame with a single write(2). It returns the errno itself,
// so callers can use errors.Is with unix errnos.
func (d *device) write(frame []byte) error {
	n, err := unix.Write(d.fd, frame)
	if err != nil {
		return err
	}
	if n != len(frame) {
		return fmt.Errorf("write of a %d-byte frame returned %d", len(frame), n)
	}
	return nil
}

// readFrame reads one reply frame, looping over short reads until it has
// the header and Length bytes of payload. Every read(2) offers the whole
// remaining buffer.
func (d *device) readFrame() (proto.Header, []byte, error) {
	if d.buf == nil {
		d.buf = make([]byte, proto.HeaderSize+proto.MaxPayload)
	}
	have, want := 0, proto.HeaderSize
	var h proto.Header
	for have < want {
		n, err := unix.Read(d.fd, d.buf[have:])
		if err != nil {
			return h, nil, err
		}
		if n == 0 {
			return h, nil, fmt.Errorf("read reply: end of file after %d of %d bytes: %w", have, want, io.ErrUnexpectedEOF)
		}
		have += n
		if want == proto.HeaderSize && have >= proto.HeaderSize {
			if h, err = proto.DecodeHeader(d.buf[:proto.HeaderSize]); err != nil {
				return h, nil, fmt.Errorf("decode reply header: %w", err)
			}
			want += int(h.Length)
		}
	}
	if have > want {
		return h, nil, fmt.Errorf("read reply: got %d bytes for a %d-byte frame", have, want)
	}
	return h, d.buf[proto.HeaderSize:want], nil
}

// roundTrip sends one request and reads and checks its reply: the reply
// type, a zero status, the request's ID, and for echo the same payload.
func (d *device) roundTrip(req proto.Header, payload []byte) (time.Duration, error) {
	frame := proto.AppendFrame(make([]byte, 0, proto.HeaderSize+len(payload)), req, payload)
	start := time.Now()
	if err := d.write(frame); err != nil {
		return 0, fmt.Errorf("write %v request of %d bytes: %w", req.Type, len(payload), err)
	}
	h, reply, err := d.readFrame()
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, err
	}
	return elapsed, checkReply(req, payload, h, reply)
}

func checkReply(req proto.Header, payload []byte, h proto.Header, reply []byte) error {
	if err := proto.CheckReply(h, req.Type); err != nil {
		return err
	}
	if h.Status != 0 {
		return fmt.Errorf("%v reply has status %d (%v)", req.Type, h.Status, unix.Errno(h.Status))
	}
	if h.ID != req.ID {
		return fmt.Errorf("reply ID %#x, want %#x", h.ID, req.ID)
	}
	if req.Type == proto.TypeEcho && !bytes.Equal(reply, payload) {
		return fmt.Errorf("echo reply of %d bytes differs from the %d-byte request at byte %d", len(reply), len(payload), firstDiff(reply, payload))
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// errnoName returns the symbolic name of the errno that err wraps, such as
// EINVAL, or err's text when it wraps none.
func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errnoString(errno)
	}
	return err.Error()
}

// errnoString returns the symbolic name of errno. Linux gives ENOTSUP and
// EOPNOTSUPP the same value, and the module's errors use EOPNOTSUPP.
func errnoString(errno unix.Errno) string {
	if errno == unix.EOPNOTSUPP {
		return "EOPNOTSUPP"
	}
	if name := unix.ErrnoName(errno); name != "" {
		return name
	}
	return fmt.Sprintf("errno %d", int(errno))
}
