package proto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/umhblob/umhblob/internal/prototest"
)

// errnos maps the errno names that vectors.txt uses.
var errnos = map[string]syscall.Errno{
	"EBADMSG":         syscall.EBADMSG,
	"EINVAL":          syscall.EINVAL,
	"EMSGSIZE":        syscall.EMSGSIZE,
	"EOPNOTSUPP":      syscall.EOPNOTSUPP,
	"EPROTO":          syscall.EPROTO,
	"EPROTONOSUPPORT": syscall.EPROTONOSUPPORT,
}

// runCheckT runs the Go checks that a vector's check column names.
func runCheckT(t testing.TB, check string, frame []byte) error {
	t.Helper()

	requestType := -1
	if n, ok := strings.CutPrefix(check, "reply:"); ok {
		v, err := strconv.ParseUint(n, 0, 16)
		if err != nil {
			t.Fatalf("invalid request type in check %q: %v", check, err)
		}
		requestType = int(v)
	} else if check != "header" && check != "request" {
		t.Fatalf("unknown check %q", check)
	}

	h, err := DecodeHeader(frame)
	switch {
	case check == "header" || err != nil:
		return err
	case check == "request":
		return CheckRequest(h, len(frame))
	default:
		return CheckReply(h, Type(requestType))
	}
}

func TestVectors(t *testing.T) {
	for _, v := range prototest.ReadVectorsT(t) {
		t.Run(v.Name, func(t *testing.T) {
			err := runCheckT(t, v.Check, v.Frame)
			if v.Expected == "ok" {
				if err != nil {
					t.Errorf("%s check = %v, want ok", v.Check, err)
				}
				return
			}
			want, ok := errnos[v.Expected]
			if !ok {
				t.Fatalf("unknown errno name %q", v.Expected)
			}
			if !errors.Is(err, want) {
				t.Errorf("%s check = %v, want %s", v.Check, err, v.Expected)
			}
		})
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    Header
	}{
		{"ping", NewHeader(TypePing, 1, 0)},
		{"zero id", NewHeader(TypeEcho, 0, 3)},
		{"max id", NewHeader(TypeEcho, math.MaxUint64, 3)},
		{"max payload", NewHeader(TypeEcho, 7, MaxPayload)},
		{"error reply", Header{Magic: Magic, Version: Version, Type: TypeEcho | TypeReply, ID: 1 << 40, Status: MaxStatus}},
		{"unknown type", NewHeader(0x7fff, 5, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.h.Append([]byte("prefix"))
			if !bytes.HasPrefix(b, []byte("prefix")) {
				t.Fatalf("Append overwrote the buffer: %x", b)
			}
			b = b[len("prefix"):]
			if len(b) != HeaderSize {
				t.Fatalf("Append added %d bytes, want %d", len(b), HeaderSize)
			}
			got, err := DecodeHeader(b)
			if err != nil {
				t.Fatalf("DecodeHeader: %v", err)
			}
			if got != tt.h {
				t.Errorf("DecodeHeader(Append(%+v)) = %+v", tt.h, got)
			}
		})
	}
}

func TestHeaderLayout(t *testing.T) {
	h := Header{Magic: Magic, Version: Version, Type: TypeEcho, ID: 0x0807060504030201, Length: 3, Status: 0x16}
	want, _ := hex.DecodeString("554d4842" + "0100" + "0300" + "0102030405060708" + "03000000" + "16000000")
	if got := h.Append(nil); !bytes.Equal(got, want) {
		t.Errorf("Append = %x, want %x", got, want)
	}
}

func TestDecodeHeaderFillsOnError(t *testing.T) {
	b := NewHeader(TypeEcho, 42, 0).Append(nil)
	b[4] = 9 // version

	h, err := DecodeHeader(b)
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("DecodeHeader = %v, want ErrVersion", err)
	}
	if h.Version != 9 || h.ID != 42 || h.Type != TypeEcho {
		t.Errorf("DecodeHeader filled %+v, want version 9, ID 42, type echo", h)
	}
}

func TestReadFrame(t *testing.T) {
	var stream []byte
	payloads := [][]byte{nil, []byte("abc"), bytes.Repeat([]byte{0xa5}, 70000)}
	for i, p := range payloads {
		stream = AppendFrame(stream, NewHeader(TypeEcho, uint64(i), 0), p)
	}

	readers := map[string]func([]byte) io.Reader{
		"whole":    func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one byte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"half":     func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
	}
	for name, newReader := range readers {
		t.Run(name, func(t *testing.T) {
			r := newReader(stream)
			for i, want := range payloads {
				h, got, err := ReadFrame(r)
				if err != nil {
					t.Fatalf("frame %d: ReadFrame: %v", i, err)
				}
				if h.ID != uint64(i) || h.Length != uint32(len(want)) {
					t.Errorf("frame %d: header %+v, want ID %d, length %d", i, h, i, len(want))
				}
				if !bytes.Equal(got, want) {
					t.Errorf("frame %d: payload of %d bytes differs from %d written", i, len(got), len(want))
				}
			}
			if _, _, err := ReadFrame(r); !errors.Is(err, io.EOF) {
				t.Errorf("ReadFrame at end = %v, want io.EOF", err)
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	frame := AppendFrame(nil, NewHeader(TypeEcho, 1, 0), []byte("payload"))
	badMagic := append([]byte{}, frame...)
	badMagic[0] = 'X'
	huge := NewHeader(TypeEcho, 1, 0).Append(nil)
	huge[16], huge[17], huge[18], huge[19] = 0xff, 0xff, 0xff, 0xff

	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty", nil, io.EOF},
		{"truncated header", frame[:HeaderSize-1], io.ErrUnexpectedEOF},
		{"one header byte", frame[:1], io.ErrUnexpectedEOF},
		{"header only", frame[:HeaderSize], io.ErrUnexpectedEOF},
		{"truncated payload", frame[:len(frame)-1], io.ErrUnexpectedEOF},
		{"bad magic", badMagic, ErrBadMagic},
		{"huge length", huge, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := iotest.OneByteReader(bytes.NewReader(tt.input))
			_, payload, err := ReadFrame(r)
			if !errors.Is(err, tt.want) {
				t.Errorf("ReadFrame = %v, want %v", err, tt.want)
			}
			if payload != nil {
				t.Errorf("ReadFrame returned a %d-byte payload with an error", len(payload))
			}
		})
	}
}

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(b)
}

func TestWriteFrame(t *testing.T) {
	var w countingWriter
	payload := []byte("hello")
	h := NewHeader(TypeEcho, 3, 0) // WriteFrame sets Length

	if err := WriteFrame(&w, h, payload); err != nil {
		t.Fatalf("WriteFrame: %v", err)
	}
	if w.writes != 1 {
		t.Errorf("WriteFrame made %d Write calls, want 1", w.writes)
	}
	got, gotPayload, err := ReadFrame(&w.Buffer)
	if err != nil {
		t.Fatalf("ReadFrame: %v", err)
	}
	if got.Length != uint32(len(payload)) {
		t.Errorf("Length = %d, want %d", got.Length, len(payload))
	}
	if !bytes.Equal(gotPayload, payload) {
		t.Errorf("payload = %q, want %q", gotPayload, payload)
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	var w countingWriter

	err := WriteFrame(&w, NewHeader(TypeEcho, 1, 0), make([]byte, MaxPayload+1))
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("WriteFrame = %v, want ErrTooLarge (EMSGSIZE)", err)
	}
	if w.writes != 0 {
		t.Errorf("WriteFrame made %d Write calls, want 0", w.writes)
	}
}

func TestHelloRoundTrip(t *testing.T) {
	want := Hello{MaxPayload: MaxPayload, PID: 4242}

	b := want.Append(nil)
	if len(b) != HelloSize {
		t.Fatalf("Append wrote %d bytes, want %d", len(b), HelloSize)
	}
	got, err := DecodeHello(b)
	if err != nil {
		t.Fatalf("DecodeHello: %v", err)
	}
	if got != want {
		t.Errorf("DecodeHello = %+v, want %+v", got, want)
	}

	for _, n := range []int{0, HelloSize - 1, HelloSize + 1} {
		if _, err := DecodeHello(make([]byte, n)); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("DecodeHello(%d bytes) = %v, want EINVAL", n, err)
		}
	}
}

// TestHelloLayout pins the hello payload to the bytes that the C test in
// kmod/test expects too.
func TestHelloLayout(t *testing.T) {
	want := []byte{0x00, 0x00, 0x40, 0x00, 0x2a, 0x00, 0x00, 0x00}

	if got := (Hello{MaxPayload: 4 << 20, PID: 42}).Append(nil); !bytes.Equal(got, want) {
		t.Errorf("Append = %x, want %x", got, want)
	}
}

func TestTypeString(t *testing.T) {
	tests := []struct {
		t    Type
		want string
	}{
		{TypeHello, "hello(0x1)"},
		{TypePing, "ping(0x2)"},
		{TypeEcho, "echo(0x3)"},
		{TypeEcho | TypeReply, "echo-reply(0x8003)"},
		{0x63, "unknown(0x63)"},
		{0x8063, "unknown-reply(0x8063)"},
	}
	for _, tt := range tests {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("Type(%#x).String() = %q, want %q", uint16(tt.t), got, tt.want)
		}
	}
}

// goConstants are the Go values of the C #defines in kmod/umhblob_proto.h.
var goConstants = map[string]uint64{
	"UMHB_MAGIC":       uint64(Magic),
	"UMHB_VERSION":     uint64(Version),
	"UMHB_HEADER_SIZE": HeaderSize,
	"UMHB_MAX_PAYLOAD": MaxPayload,
	"UMHB_MAX_STATUS":  MaxStatus,
	"UMHB_HELLO_SIZE":  HelloSize,
	"UMHB_TYPE_HELLO":  uint64(TypeHello),
	"UMHB_TYPE_PING":   uint64(TypePing),
	"UMHB_TYPE_ECHO":   uint64(TypeEcho),
	"UMHB_TYPE_REPLY":  uint64(TypeReply),
}

// TestConstantsMatchC compiles a C program that prints every UMHB_ macro
// of kmod/umhblob_proto.h and compares the values with the Go constants.
func TestConstantsMatchC(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skipf("no C compiler: %v", err)
	}
	header, err := filepath.Abs("../kmod/umhblob_proto.h")
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(header)
	if err != nil {
		t.Fatalf("read C header: %v", err)
	}
	names := regexp.MustCompile(`(?m)^#define\s+(UMHB_\w+)\s`).FindAllStringSubmatch(string(text), -1)
	if len(names) == 0 {
		t.Fatalf("no UMHB_ macros in %s", header)
	}

	var prog strings.Builder
	prog.WriteString("#include <stdio.h>\n#include \"" + header + "\"\nint main(void)\n{\n")
	for _, m := range names {
		prog.WriteString("\tprintf(\"" + m[1] + " %llu\\n\", (unsigned long long)(" + m[1] + "));\n")
	}
	prog.WriteString("\treturn 0;\n}\n")

	dir := t.TempDir()
	src := filepath.Join(dir, "constants.c")
	bin := filepath.Join(dir, "constants")
	if err := os.WriteFile(src, []byte(prog.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-Wall", "-Werror", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("run %s: %v", bin, err)
	}

	defined := make(map[string]bool)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, value, _ := strings.Cut(line, " ")
		defined[name] = true
		t.Run(name, func(t *testing.T) {
			cValue, err := strconv.ParseUint(value, 10, 64)
			if err != nil {
				t.Fatalf("parse C output %q: %v", line, err)
			}
			goValue, ok := goConstants[name]
			if !ok {
				t.Fatalf("C defines %s = %d, with no Go constant in goConstants", name, cValue)
			}
			if goValue != cValue {
				t.Errorf("%s: C value %d, Go value %d", name, cValue, goValue)
			}
		})
	}
	for name := range goConstants {
		if !defined[name] {
			t.Errorf("%s has a Go constant but no #define in %s", name, header)
		}
	}
}
