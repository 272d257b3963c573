// Package prototest reads the frame vectors that the Go and C protocol
// checks share (proto/testdata/vectors.txt) and keeps the seed corpus
// files of the Go fuzz tests in step with them.
//
// Tests that import it accept the flag -update-seeds, which rewrites the
// seed files instead of comparing them.
package prototest

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite the seed corpus files under testdata/fuzz instead of comparing them")

// Vector is one line of proto/testdata/vectors.txt.
type Vector struct {
	Name     string
	Check    string // "header", "request" or "reply:N"
	Expected string // "ok" or an errno name
	Frame    []byte // nil for the empty buffer "-"
}

// VectorsPath returns the absolute path of proto/testdata/vectors.txt.
func VectorsPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "proto", "testdata", "vectors.txt")
}

// ReadVectors parses a vectors file: one "name check expected hex" line
// per frame, with blank lines and lines starting with # ignored.
func ReadVectors(path string) ([]Vector, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	var vectors []Vector
	scanner := bufio.NewScanner(f)
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 4 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 4", path, line, len(fields))
		}
		v := Vector{Name: fields[0], Check: fields[1], Expected: fields[2]}
		if fields[3] != "-" {
			v.Frame, err = hex.DecodeString(fields[3])
			if err != nil {
				return nil, fmt.Errorf("%s:%d: invalid hex: %w", path, line, err)
			}
		}
		vectors = append(vectors, v)
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(vectors) == 0 {
		return nil, fmt.Errorf("no vectors in %s", path)
	}
	return vectors, nil
}

// ReadVectorsT is ReadVectors of VectorsPath for tests.
func ReadVectorsT(t testing.TB) []Vector {
	t.Helper()

	vectors, err := ReadVectors(VectorsPath())
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	return vectors
}

// CorpusFile returns a Go fuzz corpus file that holds one []byte value,
// in the format that go test -fuzz reads and writes.
func CorpusFile(data []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data)
}

// CheckSeedsT checks that testdata/fuzz/<fuzzName>/<name> holds each seed
// as a corpus file, or writes the files when the test runs with
// -update-seeds. Other files in the directory, such as inputs that go
// test -fuzz saved after a failure, are left alone.
func CheckSeedsT(t testing.TB, fuzzName string, seeds map[string][]byte) {
	t.Helper()

	dir := filepath.Join("testdata", "fuzz", fuzzName)
	if *updateSeeds {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range seeds {
		path := filepath.Join(dir, name)
		want := CorpusFile(data)
		if *updateSeeds {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("read seed: %v (run go test -run %s -update-seeds)", err, t.Name())
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("seed %s is out of date (run go test -run %s -update-seeds)", path, t.Name())
		}
	}
}
