package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/proto"
	"github.com/umhblob/umhblob/usermode"
)

const usage = `usage: umhctl [-device PATH | -helper PATH] [-timeout DURATION] COMMAND [ARGS]

commands:
  ping                            send a ping request
  echo [-size N | -data STRING]   send an echo request and compare the payloads
  raw HEXFRAME                    send a whole request frame, given in hex
  bench [-n N] [-size N] [-c C]   send N echo requests, C at a time

options:
`

// errUsage is wrapped by every error in the command line.
var errUsage = errors.New("usage error")

func usageErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s (run umhctl -h for help)", errUsage, fmt.Sprintf(format, args...))
}

// command is one of umhctl's commands.
type command func(ctx context.Context, c usermode.Client, args []string, stdout io.Writer) error

var commands = map[string]command{
	"ping":  pingCommand,
	"echo":  echoCommand,
	"raw":   rawCommand,
	"bench": benchCommand,
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("umhctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	device := fs.String("device", "", "path of the module's device (default "+usermode.DevicePath+")")
	helper := fs.String("helper", "", "path of a helper binary to start as a child process instead of using the device")
	timeout := fs.Duration("timeout", 5*time.Second, "time a request waits for its reply; with -device, the module's request_timeout_ms applies instead")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs)
			return nil
		}
		return usageErrorf("%v", err)
	}

	if *device != "" && *helper != "" {
		return usageErrorf("-device and -helper cannot both be set")
	}
	if fs.NArg() == 0 {
		return usageErrorf("missing command")
	}
	name := fs.Arg(0)
	cmd, ok := commands[name]
	if !ok {
		return usageErrorf("unknown command %q", name)
	}

	ctx := context.Background()
	client, err := openClient(ctx, *device, *helper, *timeout)
	if err != nil {
		return err
	}
	err = cmd(ctx, client, fs.Args()[1:], stdout)
	if closeErr := client.Close(); closeErr != nil {
		err = errors.Join(err, closeErr)
	}
	return err
}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, usage)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func openClient(ctx context.Context, device, helper string, timeout time.Duration) (usermode.Client, error) {
	if helper != "" {
		h, err := usermode.Start(ctx, helper, &usermode.Options{RequestTimeout: timeout})
		if err != nil {
			return nil, err
		}
		return h, nil
	}
	if device == "" {
		device = usermode.DevicePath
	}
	d, err := usermode.OpenDevice(device)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (load the umhblob module, or run the helper with -helper PATH)", err)
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

func pingCommand(ctx context.Context, c usermode.Client, args []string, stdout io.Writer) error {
	if len(args) != 0 {
		return usageErrorf("ping takes no arguments, got %q", args)
	}
	start := time.Now()
	r, err := c.Ping(ctx)
	printReply(stdout, r, time.Since(start), "")
	return err
}

func echoCommand(ctx context.Context, c usermode.Client, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	size := fs.Int("size", 64, "payload size in bytes, filled with random bytes")
	data := fs.String("data", "", "payload, as a string")
	if err := fs.Parse(args); err != nil {
		return usageErrorf("echo: %v", err)
	}
	if fs.NArg() != 0 {
		return usageErrorf("echo: unexpected argument %q", fs.Arg(0))
	}
	sizeSet := false
	fs.Visit(func(f *flag.Flag) { sizeSet = sizeSet || f.Name == "size" })
	if sizeSet && *data != "" {
		return usageErrorf("echo: -size and -data cannot both be set")
	}

	payload := []byte(*data)
	if *data == "" {
		if err := checkSize(*size); err != nil {
			return err
		}
		payload = randomPayload(*size)
	}

	start := time.Now()
	r, err := c.Echo(ctx, payload)
	rtt := time.Since(start)
	if err != nil {
		printReply(stdout, r, rtt, "")
		return err
	}
	if i := firstDiff(r.Payload, payload); i >= 0 {
		printReply(stdout, r, rtt, fmt.Sprintf(" payload=mismatch at byte %d", i))
		return fmt.Errorf("echo reply payload of %d bytes differs from the %d-byte request at byte %d", len(r.Payload), len(payload), i)
	}
	printReply(stdout, r, rtt, " payload=match")
	return nil
}

func rawCommand(ctx context.Context, c usermode.Client, args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return usageErrorf("raw takes one argument, the frame in hex")
	}
	frame, err := hex.DecodeString(args[0])
	if err != nil {
		return usageErrorf("raw: invalid hex frame: %v", err)
	}

	start := time.Now()
	reply, err := c.Do(ctx, frame)
	rtt := time.Since(start)
	if err != nil {
		return fmt.Errorf("raw request: %w%s", err, errnoSuffix(err))
	}
	h, err := proto.DecodeHeader(reply)
	if err != nil {
		return fmt.Errorf("raw request: decode reply: %w", err)
	}
	printReply(stdout, usermode.Reply{Header: h, Payload: reply[proto.HeaderSize:]}, rtt, " payload="+shortHex(reply[proto.HeaderSize:]))
	return nil
}

// printReply prints one line about a reply; nothing when r is empty
// because the request failed before a reply arrived.
func printReply(w io.Writer, r usermode.Reply, rtt time.Duration, suffix string) {
	if r.Header.Magic == 0 {
		return
	}
	status := fmt.Sprint(r.Header.Status)
	if r.Header.Status != 0 {
		status += " (" + errnoName(unix.Errno(r.Header.Status)) + ")"
	}
	fmt.Fprintf(w, "%v id=%d status=%s length=%d rtt=%v%s\n", r.Header.Type, r.Header.ID, status, r.Header.Length, rtt.Round(time.Microsecond), suffix)
}

// errnoSuffix returns " (ENAME)" for the errno that err wraps, so the
// output names the same errno with -device and with -helper.
func errnoSuffix(err error) string {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return ""
	}
	return " (" + errnoName(errno) + ")"
}

// errnoName returns the symbolic name of errno. Linux gives ENOTSUP and
// EOPNOTSUPP the same value, and the module's errors use EOPNOTSUPP.
func errnoName(errno unix.Errno) string {
	if errno == unix.EOPNOTSUPP {
		return "EOPNOTSUPP"
	}
	if name := unix.ErrnoName(errno); name != "" {
		return name
	}
	return fmt.Sprintf("errno %d", int(errno))
}

// shortHex returns b in hex, cut after 64 bytes.
func shortHex(b []byte) string {
	const max = 64
	if len(b) <= max {
		return hex.EncodeToString(b)
	}
	return hex.EncodeToString(b[:max]) + fmt.Sprintf("...(%d bytes)", len(b))
}

func checkSize(n int) error {
	if n < 0 || n > proto.MaxPayload {
		return usageErrorf("-size %d is out of range 0 to %d", n, proto.MaxPayload)
	}
	return nil
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// firstDiff returns the index of the first byte where a and b differ, or
// -1 when they are equal.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
