package main

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/proto"
)

// badRequest is a malformed request frame, written with one write(2), and
// the errno the module must reject it with.
type badRequest struct {
	name  string
	frame []byte
	want  unix.Errno
}

// rawFrame encodes h and payload as they are, without fixing h.Length.
func rawFrame(h proto.Header, payload []byte) []byte {
	return append(h.Append(nil), payload...)
}

func (g *guest) badRequests() []badRequest {
	echo := func(n int) proto.Header { return proto.NewHeader(proto.TypeEcho, g.newID(), n) }
	with := func(h proto.Header, change func(*proto.Header)) proto.Header {
		change(&h)
		return h
	}
	hello := proto.Hello{MaxPayload: proto.MaxPayload}.Append(nil)
	return []badRequest{
		{"bad magic", rawFrame(with(echo(0), func(h *proto.Header) { h.Magic = 0x0bad0bad }), nil), unix.EBADMSG},
		{"version 2", rawFrame(with(echo(0), func(h *proto.Header) { h.Version = 2 }), nil), unix.EPROTONOSUPPORT},
		// Only the header: the length check comes before the frame check.
		{"length over 4 MiB", rawFrame(echo(proto.MaxPayload+1), nil), unix.EMSGSIZE},
		{"23-byte write", rawFrame(echo(0), nil)[:proto.HeaderSize-1], unix.EINVAL},
		{"payload shorter than length", rawFrame(echo(16), make([]byte, 8)), unix.EINVAL},
		{"payload longer than length", rawFrame(echo(8), make([]byte, 16)), unix.EINVAL},
		{"hello request", rawFrame(proto.NewHeader(proto.TypeHello, g.newID(), len(hello)), hello), unix.EOPNOTSUPP},
		{"unknown type 99", rawFrame(proto.NewHeader(99, g.newID(), 0), nil), unix.EOPNOTSUPP},
		{"reply type as request", rawFrame(proto.NewHeader(proto.TypeEcho|proto.TypeReply, g.newID(), 0), nil), unix.EOPNOTSUPP},
		{"nonzero status", rawFrame(with(echo(0), func(h *proto.Header) { h.Status = uint32(unix.EIO) }), nil), unix.EINVAL},
		{"ping with payload", rawFrame(proto.NewHeader(proto.TypePing, g.newID(), 4), make([]byte, 4)), unix.EINVAL},
	}
}

// malformed sends malformed requests and checks the errno of each. It also
// checks read(2) without a reply and a second write before the reply was
// read, and then checks that the same helper still replies to an echo.
func (g *guest) malformed() (string, error) {
	var got []string
	for _, bad := range g.badRequests() {
		if err := g.writeBad(bad); err != nil {
			return strings.Join(got, ", "), fmt.Errorf("%s: %w", bad.name, err)
		}
		g.narrate("%-28s -> %s", bad.name, errnoString(bad.want))
		got = append(got, bad.name+" "+errnoString(bad.want))
	}
	if err := g.readWithoutReply(); err != nil {
		return strings.Join(got, ", "), err
	}
	got = append(got, "read without reply ENODATA")
	if err := g.writeWhileReplyPending(); err != nil {
		return strings.Join(got, ", "), err
	}
	got = append(got, "second write EBUSY")

	pid, err := readHelperPID()
	if err != nil {
		return strings.Join(got, ", "), err
	}
	if pid != g.pid {
		return strings.Join(got, ", "), fmt.Errorf("helper pid is %d after the malformed requests, want %d: the helper was restarted", pid, g.pid)
	}
	if _, err := checkHelper(pid); err != nil {
		return strings.Join(got, ", "), err
	}
	if err := g.echoOnce(4096); err != nil {
		return strings.Join(got, ", "), fmt.Errorf("after the malformed requests: %w", err)
	}
	g.narrate("helper %d survived every malformed request and still replies to an echo", pid)
	return fmt.Sprintf("%s; helper %d still replies", strings.Join(got, ", "), pid), nil
}

// writeBad writes one malformed request on a fresh file descriptor.
func (g *guest) writeBad(bad badRequest) error {
	dev, err := openDevice()
	if err != nil {
		return err
	}
	defer dev.Close()
	err = dev.write(bad.frame)
	switch {
	case err == nil:
		return fmt.Errorf("%d-byte write succeeded, want %s", len(bad.frame), errnoString(bad.want))
	case !errors.Is(err, bad.want):
		return fmt.Errorf("%d-byte write failed with %s (%v), want %s", len(bad.frame), errnoName(err), err, errnoString(bad.want))
	}
	return nil
}

// readWithoutReply checks that read(2) on a descriptor with no request
// fails with ENODATA instead of blocking.
func (g *guest) readWithoutReply() error {
	dev, err := openDevice()
	if err != nil {
		return err
	}
	defer dev.Close()
	buf := make([]byte, proto.HeaderSize+64)
	n, err := unix.Read(dev.fd, buf)
	if !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("read without a request returned %d bytes, error %v; want ENODATA", n, err)
	}
	g.narrate("%-28s -> ENODATA", "read without a request")
	return nil
}

// writeWhileReplyPending checks that a second request on a descriptor
// whose reply was not read yet fails with EBUSY and leaves the first
// reply intact, and that the descriptor works again once it was read.
func (g *guest) writeWhileReplyPending() error {
	dev, err := openDevice()
	if err != nil {
		return err
	}
	defer dev.Close()

	first := proto.NewHeader(proto.TypeEcho, g.newID(), 64)
	firstPayload := g.payloads.next(64)
	if err := dev.write(rawFrame(first, firstPayload)); err != nil {
		return fmt.Errorf("first echo request: %w", err)
	}
	second := proto.NewHeader(proto.TypeEcho, g.newID(), 64)
	secondPayload := g.payloads.next(64)
	err = dev.write(rawFrame(second, secondPayload))
	if !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("second write with a reply pending: error %v, want EBUSY", err)
	}
	g.narrate("%-28s -> EBUSY", "second write, reply pending")

	h, reply, err := dev.readFrame()
	if err != nil {
		return fmt.Errorf("read the pending reply: %w", err)
	}
	if err := checkReply(first, firstPayload, h, reply); err != nil {
		return fmt.Errorf("pending reply after EBUSY: %w", err)
	}
	n, err := unix.Read(dev.fd, make([]byte, proto.HeaderSize))
	if !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("read after the reply was consumed returned %d bytes, error %v; want ENODATA", n, err)
	}
	if _, err := dev.roundTrip(second, secondPayload); err != nil {
		return fmt.Errorf("echo after the pending reply was read: %w", err)
	}
	g.narrate("the pending reply kept its ID and payload; the descriptor works again after reading it")
	return nil
}
