package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/umhblob/umhblob/internal/helpertest"
	"github.com/umhblob/umhblob/proto"
)

// helperPath is the helper binary that the tests start with -helper.
var helperPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "umhctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helperPath, err = helpertest.Build(dir)
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// runHelperT runs umhctl with -helper and the given arguments.
func runHelperT(t testing.TB, args ...string) (string, error) {
	t.Helper()

	var out bytes.Buffer
	err := run(append([]string{"-helper", helperPath}, args...), &out)
	return out.String(), err
}

func frameHex(h proto.Header, payload []byte) string {
	return hex.EncodeToString(proto.AppendFrame(nil, h, payload))
}

func TestCommands(t *testing.T) {
	const rtt = `rtt=[0-9.]+[µm]?s`
	tests := []struct {
		name string
		args []string
		want string // regular expression for the whole output
	}{
		{"ping", []string{"ping"}, `^ping-reply\(0x8002\) id=1 status=0 length=0 ` + rtt + `\n$`},
		{"echo default", []string{"echo"}, `^echo-reply\(0x8003\) id=1 status=0 length=64 ` + rtt + ` payload=match\n$`},
		{"echo data", []string{"echo", "-data", "hello"}, `^echo-reply\(0x8003\) id=1 status=0 length=5 ` + rtt + ` payload=match\n$`},
		{"echo empty", []string{"echo", "-size", "0"}, ` length=0 ` + rtt + ` payload=match\n$`},
		{"echo 1 MiB", []string{"echo", "-size", "1048576"}, ` length=1048576 ` + rtt + ` payload=match\n$`},
		{"echo 4 MiB", []string{"echo", "-size", fmt.Sprint(proto.MaxPayload)}, ` length=4194304 ` + rtt + ` payload=match\n$`},
		{"raw ping", []string{"raw", frameHex(proto.NewHeader(proto.TypePing, 42, 0), nil)}, `^ping-reply\(0x8002\) id=42 status=0 length=0 ` + rtt + ` payload=\n$`},
		{"raw echo", []string{"raw", frameHex(proto.NewHeader(proto.TypeEcho, 7, 0), []byte("abc"))}, `^echo-reply\(0x8003\) id=7 status=0 length=3 ` + rtt + ` payload=616263\n$`},
		{"raw long echo", []string{"raw", frameHex(proto.NewHeader(proto.TypeEcho, 7, 0), make([]byte, 100))}, ` payload=0{128}\.\.\.\(100 bytes\)\n$`},
		{"bench", []string{"bench", "-n", "50", "-size", "1000", "-c", "4"}, `(?s)^bench: 50 echo requests of 1000 bytes, 4 at a time\nok 50, failed 0, .*\nrtt min .*, p50 .*, max .*\n$`},
		{"bench large", []string{"bench", "-n", "4", "-size", "1048576", "-c", "2"}, `\nok 4, failed 0, `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runHelperT(t, tt.args...)
			if err != nil {
				t.Fatalf("run(%q) = %v\n%s", tt.args, err, out)
			}
			if !regexp.MustCompile(tt.want).MatchString(out) {
				t.Errorf("run(%q) output = %q, want match for %q", tt.args, out, tt.want)
			}
		})
	}
}

// TestRawRejected checks that invalid frames get the errno that the
// module's write(2) returns, without reaching the helper.
func TestRawRejected(t *testing.T) {
	ping := proto.NewHeader(proto.TypePing, 1, 0)
	badMagic := ping
	badMagic.Magic = 0x0bad0bad
	withStatus := ping
	withStatus.Status = 5

	tests := []struct {
		name  string
		frame string
		want  string
	}{
		{"short", "554d4842", "(EINVAL)"},
		{"bad magic", frameHex(badMagic, nil), "(EBADMSG)"},
		{"hello", frameHex(proto.NewHeader(proto.TypeHello, 1, 0), make([]byte, 8)), "(EOPNOTSUPP)"},
		{"status", frameHex(withStatus, nil), "(EINVAL)"},
		{"ping payload", frameHex(ping, []byte("x")), "(EINVAL)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runHelperT(t, "raw", tt.frame)
			if err == nil || !strings.HasSuffix(err.Error(), tt.want) {
				t.Errorf("run(raw %s) = %v, want an error ending in %q", tt.frame, err, tt.want)
			}
			if out != "" {
				t.Errorf("run(raw %s) output = %q, want none", tt.frame, out)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"unknown command", []string{"pong"}},
		{"unknown flag", []string{"-verbose", "ping"}},
		{"device and helper", []string{"-device", "/dev/null", "ping"}},
		{"ping argument", []string{"ping", "extra"}},
		{"echo size and data", []string{"echo", "-size", "3", "-data", "abc"}},
		{"echo negative size", []string{"echo", "-size", "-1"}},
		{"echo size over maximum", []string{"echo", "-size", fmt.Sprint(proto.MaxPayload + 1)}},
		{"echo argument", []string{"echo", "abc"}},
		{"raw without frame", []string{"raw"}},
		{"raw invalid hex", []string{"raw", "xyz"}},
		{"bench zero requests", []string{"bench", "-n", "0"}},
		{"bench zero concurrency", []string{"bench", "-c", "0"}},
		{"bench argument", []string{"bench", "10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runHelperT(t, tt.args...)
			if !errors.Is(err, errUsage) {
				t.Errorf("run(%q) = %v, want a usage error", tt.args, err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer

	if err := run([]string{"-h"}, &out); err != nil {
		t.Fatalf("run(-h) = %v", err)
	}
	for _, want := range []string{"usage: umhctl", "-helper", "bench [-n N]"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run(-h) output does not contain %q:\n%s", want, out.String())
		}
	}
}

func TestMissingDevice(t *testing.T) {
	path := t.TempDir() + "/umhblob"

	err := run([]string{"-device", path, "ping"}, &bytes.Buffer{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run(-device %s ping) = %v, want os.ErrNotExist", path, err)
	}
}

func TestMissingHelper(t *testing.T) {
	path := t.TempDir() + "/umhblob_helper"

	err := run([]string{"-helper", path, "ping"}, &bytes.Buffer{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run(-helper %s ping) = %v, want os.ErrNotExist", path, err)
	}
}

func TestFirstDiff(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", -1},
		{"abc", "abc", -1},
		{"abc", "abd", 2},
		{"ab", "abc", 2},
		{"xbc", "abc", 0},
	}
	for _, tt := range tests {
		if got := firstDiff([]byte(tt.a), []byte(tt.b)); got != tt.want {
			t.Errorf("firstDiff(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
