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
	"testing"

	"github.com/umhblob/umhblob/proto"
)

// fakeModule replaces the module behind /dev/umhblob, which needs a
// kernel of its own. The VM tests in harness/ run the real one. Each open
// file is one end of a Unix stream socket pair, and a goroutine on the
// other end replies to each request frame with a frame written in
// pieces, so the reader sees short reads.
type fakeModule struct {
	t     testing.TB
	fault string // "", "wrong-id", "status" or "hang-up"
	opens atomic.Int32
	wg    sync.WaitGroup
}

func newFakeDeviceT(t testing.TB, fault string) (*Device, *fakeModule) {
	t.Helper()

	m := &fakeModule{t: t, fault: fault}
	d, err := newDevice("fake", m.open)
	if err != nil {
		t.Fatalf("newDevice = %v", err)
	}
	t.Cleanup(func() {
		d.Close()
		m.wg.Wait()
	})
	return d, m
}

func (m *fakeModule) open() (int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	m.opens.Add(1)
	m.wg.Go(func() { m.serve(os.NewFile(uintptr(fds[1]), "fake module")) })
	return fds[0], nil
}

func (m *fakeModule) serve(f *os.File) {
	defer f.Close()

	for {
		req, payload, err := proto.ReadFrame(f)
		if err != nil {
			return // the Device closed its end
		}
		if err := proto.CheckRequest(req, proto.HeaderSize+len(payload)); err != nil {
			m.t.Errorf("fake module got an invalid request: %v", err)
			return
		}
		h := proto.NewHeader(req.Type|proto.TypeReply, req.ID, len(payload))
		switch m.fault {
		case "wrong-id":
			h.ID++
		case "status":
			h.Status = uint32(syscall.EINVAL)
			h.Length = 0
			payload = nil
		case "hang-up":
			f.Write(h.Append(nil)[:10])
			return
		}

		frame := append(h.Append(nil), payload...)
		for _, piece := range [][]byte{frame[:10], frame[10 : proto.HeaderSize+len(payload)/2], frame[proto.HeaderSize+len(payload)/2:]} {
			if _, err := f.Write(piece); err != nil {
				return
			}
		}
	}
}

func TestDeviceRequests(t *testing.T) {
	d, _ := newFakeDeviceT(t, "")
	ctx := context.Background()

	if r, err := d.Ping(ctx); err != nil || r.Header.Type != proto.TypePing|proto.TypeReply {
		t.Errorf("Ping = %+v, %v, want a ping reply", r.Header, err)
	}
	for _, n := range []int{0, 1, 64<<10 + 1, 1 << 20, proto.MaxPayload} {
		t.Run(fmt.Sprintf("echo %d", n), func(t *testing.T) {
			want := randomBytes(n)
			r, err := d.Echo(ctx, want)
			if err != nil {
				t.Fatalf("Echo(%d bytes) = %v", n, err)
			}
			if !bytes.Equal(r.Payload, want) {
				t.Errorf("Echo(%d bytes) payload differs from request", n)
			}
		})
	}

	frame := proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho, 0xabcdef, 0), []byte("xyz"))
	reply, err := d.Do(ctx, frame)
	if err != nil {
		t.Fatalf("Do = %v", err)
	}
	if want := proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho|proto.TypeReply, 0xabcdef, 0), []byte("xyz")); !bytes.Equal(reply, want) {
		t.Errorf("Do = %x, want %x", reply, want)
	}
}

// TestDeviceConcurrent checks that requests from many goroutines each get
// an open file of their own.
func TestDeviceConcurrent(t *testing.T) {
	const goroutines = 4
	d, m := newFakeDeviceT(t, "")

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range 20 {
				want := randomBytes(i * 1000)
				r, err := d.Echo(context.Background(), want)
				if err != nil {
					t.Errorf("goroutine %d: Echo = %v", g, err)
					return
				}
				if !bytes.Equal(r.Payload, want) {
					t.Errorf("goroutine %d: Echo(%d bytes) payload differs from request", g, len(want))
				}
			}
		})
	}
	wg.Wait()
	if got := m.opens.Load(); got > goroutines {
		t.Errorf("%d files opened for %d goroutines, want at most %d", got, goroutines, goroutines)
	}
}

func TestDeviceFaults(t *testing.T) {
	tests := []struct {
		fault string
		want  error
	}{
		{"wrong-id", proto.ErrReplyInvalid},
		{"status", syscall.EINVAL},
		{"hang-up", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			d, _ := newFakeDeviceT(t, tt.fault)

			if _, err := d.Echo(context.Background(), []byte("abc")); !errors.Is(err, tt.want) {
				t.Errorf("Echo = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestDeviceDropsBrokenFile checks that a file whose reply was not read
// whole is closed and never used again.
func TestDeviceDropsBrokenFile(t *testing.T) {
	d, m := newFakeDeviceT(t, "hang-up")

	for range 2 {
		d.Ping(context.Background())
	}
	if got := m.opens.Load(); got != 2 {
		t.Errorf("%d files opened for 2 requests that failed, want 2", got)
	}
}

func TestDeviceStatusReply(t *testing.T) {
	d, _ := newFakeDeviceT(t, "status")

	r, err := d.Ping(context.Background())
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Ping = %v, want EINVAL from the reply status", err)
	}
	if r.Header.Status != uint32(syscall.EINVAL) {
		t.Errorf("Ping reply status = %d, want %d", r.Header.Status, syscall.EINVAL)
	}
}

func TestDeviceClose(t *testing.T) {
	d, _ := newFakeDeviceT(t, "")

	if err := d.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if _, err := d.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after Close = %v, want ErrClosed", err)
	}
}

func TestDeviceContextDone(t *testing.T) {
	d, m := newFakeDeviceT(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	if _, err := d.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ping with a cancelled context = %v, want context.Canceled", err)
	}
	if got := m.opens.Load(); got != 1 {
		t.Errorf("%d files opened, want 1", got)
	}
}

func TestOpenDeviceMissing(t *testing.T) {
	path := t.TempDir() + "/umhblob"

	if _, err := OpenDevice(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenDevice(%s) = %v, want os.ErrNotExist", path, err)
	}
}
