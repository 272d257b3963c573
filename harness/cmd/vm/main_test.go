package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAttachConsoleDetachKey(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "console.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := make(chan string, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			received <- err.Error()
			return
		}
		defer conn.Close()
		conn.Write([]byte("/ # "))
		data, _ := io.ReadAll(conn) // until the client closes
		received <- string(data)
	}()

	in, inWriter, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	// Everything after Ctrl-] stays on the terminal side.
	inWriter.Write([]byte("insmod /umhblob.ko\n\x1dafter"))

	var out, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- attachConsole(socket, in, &out, &stderr) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("attachConsole = %v, want nil after Ctrl-]", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("attachConsole did not return after Ctrl-]")
	}
	inWriter.Close()

	if got := <-received; got != "insmod /umhblob.ko\n" {
		t.Errorf("console received %q, want the input before Ctrl-]", got)
	}
	if !strings.Contains(stderr.String(), "detached") {
		t.Errorf("stderr = %q, want a detached message", stderr.String())
	}
}

func TestAttachConsoleNoSocket(t *testing.T) {
	err := attachConsole(filepath.Join(t.TempDir(), "none.sock"), os.Stdin, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "attach to console") {
		t.Errorf("attachConsole(missing socket) = %v, want an attach error", err)
	}
}

func TestRunWithoutKernel(t *testing.T) {
	t.Setenv("UMHBLOB_KERNEL", "")
	t.Setenv("KDIR", "")
	var stderr bytes.Buffer
	err := run(nil, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no kernel") {
		t.Errorf("run() = %v, want a no kernel error", err)
	}
}
