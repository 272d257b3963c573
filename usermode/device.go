package usermode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/umhblob/umhblob/proto"
)

// DevicePath is the path of the module's device.
const DevicePath = "/dev/umhblob"

// Device sends requests to the module through its device file. Each open
// file of the device holds one request at a time, so Device keeps a pool
// of open files and opens another for each request that would otherwise
// wait.
//
// Raw file descriptors instead of os.File make every request exactly one
// write(2), pass each errno through unchanged, and keep the Go runtime
// from switching the file to non-blocking mode.
type Device struct {
	path      string
	open      func() (int, error)
	callerIDs atomic.Uint64

	mu     sync.Mutex // guards the fields below
	idle   []int      // open files with no request and no unread reply
	closed bool
}

// OpenDevice opens the device at path, usually DevicePath.
func OpenDevice(path string) (*Device, error) {
	return newDevice(path, func() (int, error) {
		return syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	})
}

// newDevice returns a Device that gets its files from open, and checks
// that open works.
func newDevice(path string, open func() (int, error)) (*Device, error) {
	fd, err := open()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Device{path: path, open: open, idle: []int{fd}}, nil
}

// Ping sends a ping request.
func (d *Device) Ping(ctx context.Context) (Reply, error) {
	return request(ctx, d.Do, proto.TypePing, d.callerIDs.Add(1), nil)
}

// Echo sends an echo request.
func (d *Device) Echo(ctx context.Context, payload []byte) (Reply, error) {
	return request(ctx, d.Do, proto.TypeEcho, d.callerIDs.Add(1), payload)
}

// Do writes frame with one write(2), which the module blocks until the
// helper's reply arrives, and then reads the reply frame.
//
// NOTE: ctx is checked only before the write. The write cannot be
// cancelled, and the module's request_timeout_ms parameter bounds it.
func (d *Device) Do(ctx context.Context, frame []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := d.get()
	if err != nil {
		return nil, err
	}

	if err := d.write(fd, frame); err != nil {
		// A failed write leaves no reply behind, so the file stays usable.
		d.put(fd)
		return nil, err
	}
	reply, err := d.readReply(fd)
	if err != nil {
		// The rest of the reply may still be unread, and the module
		// rejects every later write on this file with EBUSY.
		syscall.Close(fd)
		return nil, err
	}
	d.put(fd)
	return reply, nil
}

// Close closes the device's idle files, and every other one as soon as
// its request ends. A second Close does nothing and returns nil.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()

	d.closed = true
	var errs []error
	for _, fd := range d.idle {
		if err := syscall.Close(fd); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", d.path, err))
		}
	}
	d.idle = nil
	return errors.Join(errs...)
}

func (d *Device) get() (int, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return -1, ErrClosed
	}
	if n := len(d.idle); n > 0 {
		fd := d.idle[n-1]
		d.idle = d.idle[:n-1]
		d.mu.Unlock()
		return fd, nil
	}
	d.mu.Unlock()

	fd, err := d.open()
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", d.path, err)
	}
	return fd, nil
}

func (d *Device) put(fd int) {
	d.mu.Lock()
	defer d.mu.Unlock()

	if d.closed {
		syscall.Close(fd)
		return
	}
	d.idle = append(d.idle, fd)
}

// write writes frame with a single write(2) and returns the errno of a
// rejected request wrapped, so errors.Is works with syscall errnos.
func (d *Device) write(fd int, frame []byte) error {
	for {
		n, err := syscall.Write(fd, frame)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("write %d-byte request to %s: %w", len(frame), d.path, err)
		}
		if n != len(frame) {
			return fmt.Errorf("write %d-byte request to %s: wrote %d bytes", len(frame), d.path, n)
		}
		return nil
	}
}

// readReply reads one reply frame: the header, then Length payload bytes,
// looping over short reads.
func (d *Device) readReply(fd int) ([]byte, error) {
	var raw [proto.HeaderSize]byte
	if err := readFull(fd, raw[:]); err != nil {
		return nil, fmt.Errorf("read reply header from %s: %w", d.path, err)
	}
	h, err := proto.DecodeHeader(raw[:])
	if err != nil {
		return nil, fmt.Errorf("read reply from %s: %w", d.path, err)
	}

	frame := make([]byte, proto.HeaderSize+int(h.Length))
	copy(frame, raw[:])
	if err := readFull(fd, frame[proto.HeaderSize:]); err != nil {
		return nil, fmt.Errorf("read %d-byte reply payload from %s: %w", h.Length, d.path, err)
	}
	return frame, nil
}

func readFull(fd int, buf []byte) error {
	for done := 0; done < len(buf); {
		n, err := syscall.Read(fd, buf[done:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("end of file after %d of %d bytes: %w", done, len(buf), io.ErrUnexpectedEOF)
		}
		done += n
	}
	return nil
}
