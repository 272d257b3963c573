// Package paths locates the repository root and the harness cache.
//
// Environment variables:
//
//	UMHBLOB_CACHE    cache directory for the kernel source package, kernel
//	                 builds and initramfs images
//	                 (default ${XDG_CACHE_HOME:-$HOME/.cache}/umhblob)
//	XDG_CACHE_HOME   used as described above when UMHBLOB_CACHE is unset
package paths

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModulePath is the module path in the repository's go.mod.
const ModulePath = "github.com/umhblob/umhblob"

// CacheDir returns the cache directory. It does not create it.
func CacheDir() (string, error) {
	if dir := os.Getenv("UMHBLOB_CACHE"); dir != "" {
		return filepath.Abs(dir)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find cache directory (set UMHBLOB_CACHE): %w", err)
	}
	return filepath.Join(base, "umhblob"), nil
}

// Root returns the repository root: the directory of the go.mod that the
// go command finds from the working directory. It fails when that module
// is not ModulePath, so the harness must run from inside the repository.
func Root() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("run go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("find repository root: the working directory is not inside a Go module; run from the umhblob repository")
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("read go.mod: %w", err)
	}
	if !bytes.Contains(data, []byte("module "+ModulePath+"\n")) {
		return "", fmt.Errorf("find repository root: %s is not the go.mod of %s; run from the umhblob repository", gomod, ModulePath)
	}
	return filepath.Dir(gomod), nil
}
