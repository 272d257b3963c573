package usermode

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/umhblob/umhblob/internal/helpertest"
)

// buildDir holds the binaries that the tests build, and helperPath is the
// helper under test.
var buildDir, helperPath string

func TestMain(m *testing.M) {
	var err error
	buildDir, err = os.MkdirTemp("", "usermode-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helperPath, err = helpertest.Build(buildDir)
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(buildDir)
	os.Exit(code)
}

// startT starts the helper under test and closes it at the end of the
// test. A test that checks Close's result calls Close itself first.
func startT(t testing.TB, opts *Options) *Helper {
	t.Helper()
	return startPathT(t, helperPath, opts)
}

func startPathT(t testing.TB, path string, opts *Options) *Helper {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := Start(ctx, path, opts)
	if err != nil {
		t.Fatalf("Start(%s) = %v", path, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

var (
	badHelperOnce sync.Once
	badHelperPath string
	badHelperErr  error
)

// badHelperT returns a copy of testdata/badhelper that commits fault.
func badHelperT(t testing.TB, fault string) string {
	t.Helper()

	badHelperOnce.Do(func() {
		badHelperPath, badHelperErr = helpertest.BuildPackage(buildDir, "github.com/umhblob/umhblob/usermode/testdata/badhelper", "badhelper")
	})
	if badHelperErr != nil {
		t.Fatal(badHelperErr)
	}
	path := filepath.Join(t.TempDir(), "badhelper-"+fault)
	copyFileT(t, badHelperPath, path)
	return path
}

func copyFileT(t testing.TB, from, to string) {
	t.Helper()

	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
