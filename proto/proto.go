// Package proto is the Go definition of the umhblob wire protocol, the
// framing the module and its helper speak over the helper's stdin and
// stdout, and that user space writes to /dev/umhblob.
//
// A frame is a 24-byte little-endian header followed by Length bytes of
// payload. The C definition is kmod/umhblob_proto.h with the checks in
// kmod/umhblob_frame.c; testdata/vectors.txt holds frames that both
// implementations must judge the same way.
package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// Protocol constants. They must match kmod/umhblob_proto.h.
const (
	Magic      uint32 = 0x42484d55 // bytes "UMHB" on the wire
	Version    uint16 = 1
	HeaderSize        = 24
	MaxPayload        = 4 << 20 // 4 MiB, 64 pipe buffers
	MaxStatus         = 4095    // largest errno a reply carries
	HelloSize         = 8       // le32 max payload, le32 pid
)

// Type is a frame's type. A reply carries its request's type with TypeReply set.
type Type uint16

// Frame types.
const (
	TypeHello Type = 1 // handshake, sent only by the module
	TypePing  Type = 2 // empty payload, empty reply
	TypeEcho  Type = 3 // reply payload equals request payload

	TypeReply Type = 0x8000
)

func (t Type) String() string {
	name := "unknown"
	switch t &^ TypeReply {
	case TypeHello:
		name = "hello"
	case TypePing:
		name = "ping"
	case TypeEcho:
		name = "echo"
	}
	if t&TypeReply != 0 {
		name += "-reply"
	}
	return fmt.Sprintf("%s(%#x)", name, uint16(t))
}

// Errors returned by the decoder and the checks. Each wraps the errno the
// module returns for the same fault, so errors.Is works with either.
var (
	ErrShortHeader  = fmt.Errorf("frame shorter than the %d-byte header: %w", HeaderSize, syscall.EINVAL)
	ErrBadMagic     = fmt.Errorf("invalid frame magic: %w", syscall.EBADMSG)
	ErrVersion      = fmt.Errorf("unsupported protocol version: %w", syscall.EPROTONOSUPPORT)
	ErrTooLarge     = fmt.Errorf("payload larger than %d bytes: %w", MaxPayload, syscall.EMSGSIZE)
	ErrStatus       = fmt.Errorf("status out of range: %w", syscall.EINVAL)
	ErrRequestType  = fmt.Errorf("request type not allowed: %w", syscall.EOPNOTSUPP)
	ErrFrameLength  = fmt.Errorf("frame length does not match header: %w", syscall.EINVAL)
	ErrReplyInvalid = fmt.Errorf("reply does not match request: %w", syscall.EPROTO)
)

// Header is a decoded frame header.
type Header struct {
	Magic   uint32
	Version uint16
	Type    Type
	ID      uint64
	Length  uint32 // payload bytes after the header
	Status  uint32 // 0, or a positive errno in a reply
}

// NewHeader returns a header of the current version for a payload of n bytes.
func NewHeader(t Type, id uint64, n int) Header {
	return Header{Magic: Magic, Version: Version, Type: t, ID: id, Length: uint32(n)}
}

// DecodeHeader decodes the first HeaderSize bytes of b and checks the
// fields every frame must get right. When b holds a whole header, the
// header is filled in even if the error is not nil.
func DecodeHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, ErrShortHeader
	}
	h.Magic = binary.LittleEndian.Uint32(b[0:])
	h.Version = binary.LittleEndian.Uint16(b[4:])
	h.Type = Type(binary.LittleEndian.Uint16(b[6:]))
	h.ID = binary.LittleEndian.Uint64(b[8:])
	h.Length = binary.LittleEndian.Uint32(b[16:])
	h.Status = binary.LittleEndian.Uint32(b[20:])

	switch {
	case h.Magic != Magic:
		return h, fmt.Errorf("%w: %#08x", ErrBadMagic, h.Magic)
	case h.Version != Version:
		return h, fmt.Errorf("%w: %d, want %d", ErrVersion, h.Version, Version)
	case h.Length > MaxPayload:
		return h, fmt.Errorf("%w: %d", ErrTooLarge, h.Length)
	case h.Status > MaxStatus:
		return h, fmt.Errorf("%w: %d", ErrStatus, h.Status)
	}
	return h, nil
}

// Append appends the encoded header to b.
func (h Header) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, h.Magic)
	b = binary.LittleEndian.AppendUint16(b, h.Version)
	b = binary.LittleEndian.AppendUint16(b, uint16(h.Type))
	b = binary.LittleEndian.AppendUint64(b, h.ID)
	b = binary.LittleEndian.AppendUint32(b, h.Length)
	return binary.LittleEndian.AppendUint32(b, h.Status)
}

// CheckRequest checks a request that user space writes to the module's
// device as one frame of frameLen bytes. Only ping and echo are allowed
// there, because the handshake belongs to the module.
func CheckRequest(h Header, frameLen int) error {
	switch {
	case h.Type != TypePing && h.Type != TypeEcho:
		return fmt.Errorf("%w: %v", ErrRequestType, h.Type)
	case h.Status != 0:
		return fmt.Errorf("%w: request carries status %d", ErrStatus, h.Status)
	case frameLen != HeaderSize+int(h.Length):
		return fmt.Errorf("%w: %d bytes for a %d-byte payload", ErrFrameLength, frameLen, h.Length)
	case h.Type == TypePing && h.Length != 0:
		return fmt.Errorf("%w: ping with a %d-byte payload", ErrFrameLength, h.Length)
	}
	return nil
}

// CheckReply checks a reply against the type of its request.
func CheckReply(h Header, requestType Type) error {
	if h.Type != requestType|TypeReply {
		return fmt.Errorf("%w: type %v for a %v request", ErrReplyInvalid, h.Type, requestType)
	}
	if h.Status != 0 {
		return nil
	}
	if requestType == TypeHello && h.Length != HelloSize {
		return fmt.Errorf("%w: hello reply of %d bytes", ErrReplyInvalid, h.Length)
	}
	if requestType == TypePing && h.Length != 0 {
		return fmt.Errorf("%w: ping reply of %d bytes", ErrReplyInvalid, h.Length)
	}
	return nil
}

// ReadFrame reads one whole frame from r, looping over short reads. It
// returns io.EOF only when r ends cleanly before the first header byte.
func ReadFrame(r io.Reader) (Header, []byte, error) {
	var raw [HeaderSize]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		return Header{}, nil, err
	}
	h, err := DecodeHeader(raw[:])
	if err != nil {
		return h, nil, err
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, fmt.Errorf("read %d-byte payload: %w", h.Length, err)
	}
	return h, payload, nil
}

// AppendFrame appends the header, with Length set from payload, and the
// payload to b.
func AppendFrame(b []byte, h Header, payload []byte) []byte {
	h.Length = uint32(len(payload))
	return append(h.Append(b), payload...)
}

// WriteFrame writes the frame with a single Write call. A pipe write over
// 4 KiB is not atomic, so goroutines that share w must serialize calls.
func WriteFrame(w io.Writer, h Header, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %d", ErrTooLarge, len(payload))
	}
	_, err := w.Write(AppendFrame(make([]byte, 0, HeaderSize+len(payload)), h, payload))
	return err
}

// Hello is the payload of a handshake request and of its reply.
type Hello struct {
	MaxPayload uint32 // the sender's largest accepted payload
	PID        uint32 // the sender's process id, 0 from the module
}

// Append appends the encoded hello payload to b.
func (m Hello) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, m.MaxPayload)
	return binary.LittleEndian.AppendUint32(b, m.PID)
}

// DecodeHello decodes a hello payload.
func DecodeHello(b []byte) (Hello, error) {
	if len(b) != HelloSize {
		return Hello{}, fmt.Errorf("%w: hello payload of %d bytes, want %d", ErrFrameLength, len(b), HelloSize)
	}
	return Hello{
		MaxPayload: binary.LittleEndian.Uint32(b[0:]),
		PID:        binary.LittleEndian.Uint32(b[4:]),
	}, nil
}
