package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/harness/report"
	"github.com/umhblob/umhblob/proto"
)

// pipeDeviceT returns a device that reads from a pipe, and the pipe's
// write end.
func pipeDeviceT(t testing.TB) (*device, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return &device{fd: int(r.Fd())}, w
}

func TestReadFrameShortReads(t *testing.T) {
	dev, w := pipeDeviceT(t)
	payload := bytes.Repeat([]byte("umhblob!"), 1000)
	frame := proto.AppendFrame(nil, proto.NewHeader(proto.TypeEcho|proto.TypeReply, 7, 0), payload)
	go func() {
		// Split inside the header and inside the payload.
		for _, part := range [][]byte{frame[:10], frame[10:30], frame[30:]} {
			w.Write(part)
			time.Sleep(10 * time.Millisecond)
		}
	}()

	h, got, err := dev.readFrame()
	if err != nil {
		t.Fatalf("readFrame error: %v", err)
	}
	if h.ID != 7 || h.Type != proto.TypeEcho|proto.TypeReply {
		t.Errorf("readFrame header = %+v, want ID 7, type echo-reply", h)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("readFrame payload of %d bytes differs from the %d bytes written", len(got), len(payload))
	}
}

func TestReadFrameEOF(t *testing.T) {
	dev, w := pipeDeviceT(t)
	w.Write(proto.NewHeader(proto.TypeEcho|proto.TypeReply, 1, 100).Append(nil))
	w.Close()

	_, _, err := dev.readFrame()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("readFrame of a truncated frame error = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestReadFrameExtraBytes(t *testing.T) {
	dev, w := pipeDeviceT(t)
	frame := proto.AppendFrame(nil, proto.NewHeader(proto.TypePing|proto.TypeReply, 1, 0), nil)
	w.Write(append(frame, 0xff))

	if _, _, err := dev.readFrame(); err == nil {
		t.Error("readFrame of a frame followed by an extra byte error = nil, want an error")
	}
}

func TestCheckReply(t *testing.T) {
	req := proto.NewHeader(proto.TypeEcho, 0x5a5a000000000001, 3)
	payload := []byte("abc")
	reply := func(change func(*proto.Header)) proto.Header {
		h := proto.NewHeader(proto.TypeEcho|proto.TypeReply, req.ID, 3)
		if change != nil {
			change(&h)
		}
		return h
	}
	tests := []struct {
		name    string
		h       proto.Header
		payload []byte
		wantErr string
	}{
		{"good", reply(nil), []byte("abc"), ""},
		{"wrong type", reply(func(h *proto.Header) { h.Type = proto.TypePing | proto.TypeReply }), []byte("abc"), "does not match"},
		{"status", reply(func(h *proto.Header) { h.Status = uint32(unix.EIO) }), nil, "status 5"},
		{"truncated ID", reply(func(h *proto.Header) { h.ID = 1 }), []byte("abc"), "reply ID 0x1"},
		{"payload differs", reply(nil), []byte("abd"), "at byte 2"},
		{"payload short", reply(nil), []byte("ab"), "at byte 2"},
	}
	for _, tt := range tests {
		err := checkReply(req, payload, tt.h, tt.payload)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: checkReply error = %v, want nil", tt.name, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: checkReply error = %v, want one containing %q", tt.name, err, tt.wantErr)
		}
	}
}

// TestBadRequestsAreRejectedByProto checks the malformed frames against
// the Go protocol checks, which must reject each one with the same errno
// the module must return.
func TestBadRequestsAreRejectedByProto(t *testing.T) {
	g := &guest{}
	for _, bad := range g.badRequests() {
		h, err := proto.DecodeHeader(bad.frame)
		if err == nil {
			err = proto.CheckRequest(h, len(bad.frame))
		}
		if !errors.Is(err, bad.want) {
			t.Errorf("%s: proto checks return %v, want %s", bad.name, err, errnoString(bad.want))
		}
	}
}

func TestBadRequestSizes(t *testing.T) {
	g := &guest{}
	sizes := map[string]int{
		"23-byte write":               proto.HeaderSize - 1,
		"length over 4 MiB":           proto.HeaderSize,
		"payload shorter than length": proto.HeaderSize + 8,
		"payload longer than length":  proto.HeaderSize + 16,
	}
	for _, bad := range g.badRequests() {
		if want, ok := sizes[bad.name]; ok && len(bad.frame) != want {
			t.Errorf("%s: frame of %d bytes, want %d", bad.name, len(bad.frame), want)
		}
	}
}

func TestReadProcessSelf(t *testing.T) {
	p, err := readProcess(os.Getpid())
	if err != nil {
		t.Fatalf("readProcess(self) error: %v", err)
	}
	if p.PPID != os.Getppid() {
		t.Errorf("PPID = %d, want %d", p.PPID, os.Getppid())
	}
	if p.State != "R" && p.State != "S" {
		t.Errorf("State = %q, want R or S", p.State)
	}
	if p.Argv0 != os.Args[0] {
		t.Errorf("Argv0 = %q, want %q", p.Argv0, os.Args[0])
	}
	if pids, err := findByArgv0(os.Args[0]); err != nil || len(pids) == 0 {
		t.Errorf("findByArgv0(own argv[0]) = %v, %v, want this process", pids, err)
	}
}

func TestCheckHelperRejectsOtherProcesses(t *testing.T) {
	if _, err := checkHelper(os.Getpid()); err == nil || !strings.Contains(err.Error(), "argv[0]") {
		t.Errorf("checkHelper(test process) error = %v, want an argv[0] mismatch", err)
	}
	if _, err := checkHelper(0); err == nil {
		t.Error("checkHelper(0) error = nil, want an error")
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int]string{0: "0 B", 4096: "4096 B", 1 << 20: "1 MiB", proto.MaxPayload: "4 MiB", 1<<20 + 1: "1048577 B"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestStepsCoverReport(t *testing.T) {
	for _, demo := range []bool{false, true} {
		var names []string
		for _, s := range steps(demo) {
			names = append(names, s.name)
			if s.timeout <= heartbeat {
				t.Errorf("step %s has timeout %v, want more than the %v heartbeat", s.name, s.timeout, heartbeat)
			}
		}
		if want := report.StepsFor(demo); strings.Join(names, " ") != strings.Join(want, " ") {
			t.Errorf("steps(demo %v) = %v, want report.StepsFor(%v) %v", demo, names, demo, want)
		}
	}
}

func TestRunStepTimeout(t *testing.T) {
	var out bytes.Buffer
	g := &guest{out: &out}
	block := make(chan struct{})
	defer close(block)
	s := step{name: "blocked", timeout: 50 * time.Millisecond, run: func(*guest) (string, error) {
		<-block
		return "", nil
	}}

	r, timedOut := g.runStep(s)

	if !timedOut || r.Passed {
		t.Errorf("runStep(blocked) = %+v, timed out %v; want a failed, timed-out step", r, timedOut)
	}
	if !strings.Contains(r.Detail, "timed out after 50ms") {
		t.Errorf("detail = %q, want the timeout", r.Detail)
	}
}

func TestRunStepsSkipsAfterCriticalFailure(t *testing.T) {
	var out bytes.Buffer
	g := &guest{out: &out}
	ran := false
	passed := g.runSteps([]step{
		{name: "first", timeout: time.Second, critical: true, run: func(*guest) (string, error) { return "", errors.New("broken") }},
		{name: "second", timeout: time.Second, run: func(*guest) (string, error) { ran = true; return "", nil }},
	})

	if passed {
		t.Error("runSteps = true, want false")
	}
	if ran {
		t.Error("the step after a failed critical step ran")
	}
	want := "UMHBLOB STEP second FAIL 0s skipped: step first failed\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("output %q does not contain %q", out.String(), want)
	}
}
