package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"github.com/umhblob/umhblob/harness/internal/paths"
)

// Packages built into the initramfs as one busybox binary.
const (
	initPackage  = "github.com/u-root/u-root/cmds/core/init"
	guestPackage = paths.ModulePath + "/harness/cmd/umhguest"
)

// GuestModulePath is the module's path inside the initramfs, the path
// that umhguest loads by default.
const GuestModulePath = "/umhblob.ko"

// imageSpec describes one kind of initramfs: its busybox commands and
// what init runs.
type imageSpec struct {
	// recipe is part of the cache key. Change it whenever the uimage
	// options that buildImage derives from the spec change.
	recipe     string
	basePrefix string   // file name prefix of the image without the module
	modPrefix  string   // file name prefix of the image with the module
	commands   []string // Go packages built into the busybox binary
	uinit      string   // command that init runs first; "" runs the shell
	shell      string   // command behind /bin/sh; "" for none
}

// guestImage is the initramfs of the VM tests and the demo.
var guestImage = imageSpec{
	recipe:     "uimage busybox init+umhguest, init=init, uinit=umhguest, skip ldd, CGO_ENABLED=0 GOARCH=amd64; v1",
	basePrefix: "base",
	modPrefix:  "umhguest",
	commands:   []string{initPackage, guestPackage},
	uinit:      "umhguest",
}

// initramfsKeep is how many base images, and how many images with a
// module, the cache keeps.
const initramfsKeep = 4

// Initramfs returns a u-root initramfs with u-root's init, umhguest as the
// uinit and, when module is not "", the module at GuestModulePath.
//
// Building the base image (init and umhguest) takes 15 to 20 s on a
// 2-core x86-64 host, so it is cached in <cacheDir>/initramfs by a hash of go.mod, go.sum, the Go
// version and the sources of every repository package umhguest imports.
// The module goes into a second cpio archive appended to a copy of the
// base image, which the kernel unpacks after the first (see
// Documentation/driver-api/early-userspace/buffer-format.rst), so a
// rebuilt module costs no Go build.
func Initramfs(ctx context.Context, module, cacheDir string, progress io.Writer) (string, error) {
	return buildImage(ctx, guestImage, module, cacheDir, progress)
}

// buildImage returns the initramfs that spec describes, with the module
// appended when module is not "", building what the cache lacks.
func buildImage(ctx context.Context, spec imageSpec, module, cacheDir string, progress io.Writer) (string, error) {
	root, err := paths.Root()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cacheDir, "initramfs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	key, err := baseKey(ctx, root, spec)
	if err != nil {
		return "", fmt.Errorf("hash initramfs inputs: %w", err)
	}
	base := filepath.Join(dir, spec.basePrefix+"-"+key[:16]+".cpio")
	if err := cached(base, progress, func(tmp string) error { return buildBase(root, spec, tmp, progress) }); err != nil {
		return "", err
	}
	if module == "" {
		return base, nil
	}

	data, err := os.ReadFile(module)
	if err != nil {
		return "", err
	}
	moduleSum := sha256.Sum256(data)
	image := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.cpio", spec.modPrefix, key[:16], hex.EncodeToString(moduleSum[:8])))
	err = cached(image, progress, func(tmp string) error { return appendModule(base, data, tmp) })
	return image, err
}

// cached calls build to create path unless path exists. build writes a
// temporary file that is renamed to path only when build succeeds, so an
// interrupted or concurrent build never leaves a partial image.
func cached(path string, progress io.Writer, build func(tmp string) error) error {
	if _, err := os.Stat(path); err == nil {
		now := time.Now()
		os.Chtimes(path, now, now) // keeps it from being pruned
		fmt.Fprintf(progress, "vm: initramfs: using cached %s\n", path)
		return nil
	}

	fmt.Fprintf(progress, "vm: initramfs: building %s\n", path)
	start := time.Now()
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, filepath.Base(path))
	if err := build(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fmt.Fprintf(progress, "vm: initramfs: built in %v\n", time.Since(start).Round(time.Second/10))

	prefix, _, _ := strings.Cut(filepath.Base(path), "-")
	pruneInitramfs(filepath.Dir(path), prefix+"-*.cpio", initramfsKeep)
	return nil
}

// buildBase builds the image without the module, spec's commands as one
// busybox binary, into path.
func buildBase(root string, spec imageSpec, path string, progress io.Writer) error {
	mods := []uimage.Modifier{
		uimage.WithEnv(golang.DisableCGO(), golang.WithGOARCH("amd64"), golang.WithWorkingDir(root)),
		uimage.WithCPIOOutput(path),
		uimage.WithTempDir(filepath.Dir(path)),
		uimage.WithInit("init"),
		uimage.WithBusyboxCommands(spec.commands...),
		// There are no extra files whose shared libraries ldd
		// would have to find.
		uimage.WithSkipLDD(),
	}
	if spec.uinit != "" {
		mods = append(mods, uimage.WithUinit(spec.uinit))
	}
	if spec.shell != "" {
		mods = append(mods, uimage.WithShell(spec.shell))
	}
	logger := llog.New(slog.LevelWarn, llog.WritePrintf(prefixWriter{progress, "vm: initramfs: "}))
	if err := uimage.Create(logger, mods...); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	return nil
}

// appendModule writes the base image followed by a cpio archive that
// contains the module at GuestModulePath.
func appendModule(base string, module []byte, path string) error {
	baseData, err := os.ReadFile(base)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()

	// Each archive starts on a 4-byte boundary, and the kernel skips
	// zero bytes between archives.
	baseData = append(baseData, make([]byte, (4-len(baseData)%4)%4)...)
	if _, err := f.Write(baseData); err != nil {
		return err
	}
	w := cpio.Newc.Writer(f)
	record := cpio.StaticFile(strings.TrimPrefix(GuestModulePath, "/"), string(module), 0o644)
	if err := cpio.WriteRecords(w, []cpio.Record{record}); err != nil {
		return fmt.Errorf("append module to initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return fmt.Errorf("append module to initramfs: %w", err)
	}
	return f.Close()
}

// baseKey hashes every input of the image without the module.
func baseKey(ctx context.Context, root string, spec imageSpec) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "recipe %s\n", spec.recipe)
	goVersion, err := goOutput(ctx, root, "env", "GOVERSION")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "go %s\n", goVersion)

	files := []string{filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum")}
	sources, err := repoSources(ctx, root, spec.commands)
	if err != nil {
		return "", err
	}
	for _, file := range append(files, sources...) {
		if err := hashFile(h, root, file); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// repoSources returns the non-test Go files of every package in this
// repository that the initramfs commands import. Packages from other
// modules are pinned by go.sum instead.
func repoSources(ctx context.Context, root string, commands []string) ([]string, error) {
	args := append([]string{"list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}"}, commands...)
	dirs, err := goOutput(ctx, root, args...)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, dir := range strings.Fields(dirs) {
		matches, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			return nil, err
		}
		for _, file := range matches {
			if !strings.HasSuffix(file, "_test.go") {
				files = append(files, file)
			}
		}
	}
	return files, nil
}

func hashFile(h hash.Hash, root, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	name, err := filepath.Rel(root, path)
	if err != nil {
		return err
	}
	fmt.Fprintf(h, "file %s %d\n", name, len(data))
	h.Write(data)
	return nil
}

func goOutput(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		if exitErr, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("run go %s: %w\n%s", strings.Join(args, " "), err, exitErr.Stderr)
		}
		return "", fmt.Errorf("run go %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// pruneInitramfs removes all but the keep most recently modified images
// in dir that match pattern.
func pruneInitramfs(dir, pattern string, keep int) {
	images, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil || len(images) <= keep {
		return
	}
	modTime := func(path string) time.Time {
		info, err := os.Stat(path)
		if err != nil {
			return time.Time{}
		}
		return info.ModTime()
	}
	slices.SortFunc(images, func(a, b string) int { return modTime(b).Compare(modTime(a)) })
	for _, old := range images[keep:] {
		os.Remove(old)
	}
}

// prefixWriter prefixes each Write, which llog makes once per line.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
