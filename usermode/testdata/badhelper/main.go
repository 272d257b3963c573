// Command badhelper breaks the umhblob protocol in one way, so the tests
// can check that package usermode detects it. The real helper cannot be
// made to send such replies.
//
// The helper's argv[0] and environment are fixed, so the fault comes from
// the binary's file name: the tests copy the binary to badhelper-FAULT.
//
//	no-hello      exit with status 3 before reading anything
//	hello-pid     reply to HELLO with a pid other than its own
//	hello-status  reply to HELLO with status EINVAL
//	wrong-id      reply to requests with an id that is not in flight
//	wrong-type    reply to every request with an echo reply
//	bad-magic     reply to requests with a header whose magic is wrong
//	short-header  reply to the first request with half a header, then exit
//	silent        read requests and never reply to them
//	exit-3        exit with status 3 on the first request
package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/umhblob/umhblob/proto"
)

func main() {
	exe, err := os.Executable()
	if err != nil {
		os.Exit(10)
	}
	_, fault, _ := strings.Cut(filepath.Base(exe), "-")
	if fault == "no-hello" {
		os.Exit(3)
	}

	if !hello(fault) {
		os.Exit(11)
	}
	for {
		req, payload, err := proto.ReadFrame(os.Stdin)
		if err != nil {
			os.Exit(0)
		}
		if !reply(fault, req, payload) {
			os.Exit(3)
		}
	}
}

func hello(fault string) bool {
	req, _, err := proto.ReadFrame(os.Stdin)
	if err != nil || req.Type != proto.TypeHello {
		return false
	}
	h := proto.NewHeader(proto.TypeHello|proto.TypeReply, req.ID, 0)
	ours := proto.Hello{MaxPayload: proto.MaxPayload, PID: uint32(os.Getpid())}
	switch fault {
	case "hello-pid":
		ours.PID++
	case "hello-status":
		h.Status = uint32(syscall.EINVAL)
		return proto.WriteFrame(os.Stdout, h, nil) == nil
	}
	return proto.WriteFrame(os.Stdout, h, ours.Append(nil)) == nil
}

// reply sends the reply to one request, with the fault, and returns
// false to exit.
func reply(fault string, req proto.Header, payload []byte) bool {
	h := proto.NewHeader(req.Type|proto.TypeReply, req.ID, 0)
	if req.Type == proto.TypePing {
		payload = nil
	}
	switch fault {
	case "wrong-id":
		h.ID += 1000
	case "wrong-type":
		h.Type = proto.TypeEcho | proto.TypeReply
		payload = []byte("not a ping reply")
	case "bad-magic":
		h.Magic = 0x0bad0bad
	case "short-header":
		os.Stdout.Write(h.Append(nil)[:proto.HeaderSize/2])
		return false
	case "silent":
		// Keep reading, so the writer never blocks, and never reply.
		time.Sleep(time.Millisecond)
		return true
	case "exit-3":
		return false
	}
	return proto.WriteFrame(os.Stdout, h, bytes.Clone(payload)) == nil
}
