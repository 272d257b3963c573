// Package helpertest provides the umhblob helper binary to tests that run
// it as a child process.
//
// Environment:
//
//	UMHBLOB_HELPER  path of a prebuilt helper binary to test; unset or
//	                empty, the helper is built from ./helper with
//	                CGO_ENABLED=0, the way the top-level Makefile builds it
package helpertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// EnvHelper names the environment variable that points tests at a
// prebuilt helper binary.
const EnvHelper = "UMHBLOB_HELPER"

// HelperPackage is the import path of the helper's main package.
const HelperPackage = "github.com/umhblob/umhblob/helper"

// Build returns the path of the helper binary to test: $UMHBLOB_HELPER
// when it is set, or else a static binary built into dir.
func Build(dir string) (string, error) {
	if path := os.Getenv(EnvHelper); path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("%s: %w", EnvHelper, err)
		}
		return path, nil
	}
	return BuildPackage(dir, HelperPackage, "umhblob_helper")
}

// BuildPackage builds the main package pkg into dir/name as a static
// binary, without symbol tables, and returns the binary's path.
func BuildPackage(dir, pkg, name string) (string, error) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command(gotool, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}
