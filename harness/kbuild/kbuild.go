// Package kbuild builds an x86-64 Linux kernel that provides the user mode
// driver API (umd_load_blob, fork_usermode_driver) for the umhblob module
// and its VM tests.
//
// Build fetches the Debian kernel source package with apt-get download,
// unpacks it with dpkg-deb and tar, and applies
// kernel-config/<version>/*.patch. It configures the kernel with
//
//	make O=<build> ARCH=x86_64 KCONFIG_ALLCONFIG=<fragments> allnoconfig
//
// where <fragments> is kernel-config/base.config, then
// kernel-config/<version>.config, then for a variant such as "debug"
// kernel-config/<variant>.config and, if it exists,
// kernel-config/<version>/<variant>.config. A symbol assigned twice takes
// the later value, so a version fragment can override base.config, for
// example with CONFIG_X=n for a symbol the version does not have. Build
// then checks that every requested symbol kept its value and runs make
// all, which writes bzImage and Module.symvers. Out-of-tree modules build
// with make -C <build> M=<dir>.
//
// Everything lives in the cache directory, none of it in the repository:
//
//	deb/                          downloaded source packages
//	src/<package file>-<key>/     unpacked and patched source trees
//	apt/<version>/                private sources.list and package lists
//	linux-<version>[-<variant>]-<key>/
//	                              build directories (make O=), each with
//	                              umhblob-build.log and, after a successful
//	                              build, umhblob-build.stamp
//
// A build directory's key is a SHA-256 over the source package's file
// name (which contains its version), the patches, the fragments, the make
// recipe and the gcc version. An unchanged kernel is therefore built once
// per cache directory. Old build directories are not removed
// automatically. To fetch a newer source package, delete deb/.
//
// A cached build is found without taking the cache lock, so a finished
// kernel is usable while another version builds.
//
// Environment variables:
//
//	UMHBLOB_CACHE          cache directory
//	                       (default ${XDG_CACHE_HOME:-$HOME/.cache}/umhblob)
//	UMHBLOB_DEBIAN_MIRROR  Debian mirror for the source packages
//	                       (default http://deb.debian.org)
package kbuild

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/harness/internal/paths"
)

// recipe is part of the cache key. Change it whenever the way a kernel is
// configured or built changes, so that old builds are not reused.
const recipe = "make O=<build> ARCH=x86_64 KCONFIG_ALLCONFIG=<base+version> allnoconfig; make O=<build> ARCH=x86_64 all; v1"

const (
	stampName = "umhblob-build.stamp"
	logName   = "umhblob-build.log"
	fragName  = "umhblob-fragments.config"
	logTail   = 40 // lines of the make log shown when a build fails
)

// Options configures Build.
type Options struct {
	Version   string    // kernel version, a key of Sources; "" means "6.1"
	Variant   string    // "" for the test kernel, or a fragment name such as "debug" or "gdb"
	ConfigDir string    // directory with base.config, <Version>.config and <Version>/*.patch
	CacheDir  string    // "" means the default cache directory (see the package doc)
	Jobs      int       // make -j value; 0 means runtime.NumCPU()
	Progress  io.Writer // receives the phase lines; nil discards them
}

// Kernel is a finished kernel build.
type Kernel struct {
	Version  string
	Variant  string
	BuildDir string // make O= directory, the KDIR for out-of-tree modules
	Image    string // arch/x86/boot/bzImage inside BuildDir
	Log      string // make output of the build
	Cached   bool   // true when an earlier build was reused
}

// Build builds the kernel that opts describes, or returns the cached build
// when one with the same key exists.
func Build(ctx context.Context, opts Options) (*Kernel, error) {
	b, err := newBuilder(opts)
	if err != nil {
		return nil, err
	}
	k, err := b.build(ctx)
	b.summary(err)
	return k, err
}

type builder struct {
	opts     Options
	src      Source
	cacheDir string
	patches  []string
	requests []Setting
	fragment []byte // base and version fragments, concatenated

	phases []phaseTime
	begin  time.Time
}

type phaseTime struct {
	name  string
	start time.Time
	end   time.Time
}

func newBuilder(opts Options) (*builder, error) {
	opts.Version = cmp.Or(opts.Version, "6.1")
	src, ok := Sources[opts.Version]
	if !ok {
		return nil, fmt.Errorf("%w %q: supported versions are %s", errUnknownVersion, opts.Version, strings.Join(Versions(), ", "))
	}
	if !validVariant.MatchString(opts.Variant) {
		return nil, fmt.Errorf("invalid kernel variant %q: want a fragment name of lower-case letters and digits, such as debug", opts.Variant)
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.CacheDir == "" {
		dir, err := paths.CacheDir()
		if err != nil {
			return nil, err
		}
		opts.CacheDir = dir
	}

	// patch runs inside the source tree, so relative paths would break.
	configDir, err := filepath.Abs(opts.ConfigDir)
	if err != nil {
		return nil, err
	}
	opts.ConfigDir = configDir

	b := &builder{opts: opts, src: src, cacheDir: opts.CacheDir, begin: time.Now()}
	if err := b.readFragments(); err != nil {
		return nil, err
	}
	patches, err := findPatches(opts.ConfigDir, opts.Version)
	if err != nil {
		return nil, err
	}
	b.patches = patches
	return b, checkTools(exec.LookPath)
}

// readFragments concatenates the fragments in the order the package doc
// gives.
func (b *builder) readFragments() error {
	var all []byte
	for _, f := range fragmentFiles(b.opts.ConfigDir, b.opts.Version, b.opts.Variant) {
		data, err := os.ReadFile(f.path)
		if errors.Is(err, os.ErrNotExist) && f.optional {
			continue
		}
		if errors.Is(err, os.ErrNotExist) && b.opts.Variant != "" && filepath.Base(f.path) == b.opts.Variant+".config" {
			return fmt.Errorf("%w %q: %s not found", errUnknownVariant, b.opts.Variant, f.path)
		}
		if err != nil {
			return fmt.Errorf("read config fragment: %w", err)
		}
		path := f.path
		if _, err := ParseConfig(strings.NewReader(string(data))); err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		all = append(all, data...)
		if len(all) > 0 && all[len(all)-1] != '\n' {
			all = append(all, '\n')
		}
	}
	requests, err := ParseConfig(strings.NewReader(string(all)))
	if err != nil {
		return err
	}
	b.fragment, b.requests = all, requests
	return nil
}

type fragmentFile struct {
	path     string
	optional bool
}

// fragmentFiles lists the fragments for a version and variant, in merge
// order.
func fragmentFiles(configDir, version, variant string) []fragmentFile {
	files := []fragmentFile{
		{path: filepath.Join(configDir, "base.config")},
		{path: filepath.Join(configDir, version+".config")},
	}
	if variant != "" {
		files = append(files,
			fragmentFile{path: filepath.Join(configDir, variant+".config")},
			fragmentFile{path: filepath.Join(configDir, version, variant+".config"), optional: true})
	}
	return files
}

// validVariant matches the names Options.Variant accepts: a file name
// without a path, so that it cannot name a fragment outside ConfigDir.
var validVariant = regexp.MustCompile(`^([a-z][a-z0-9]*)?$`)

func (b *builder) build(ctx context.Context) (*Kernel, error) {
	if err := os.MkdirAll(b.cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache directory: %w", err)
	}
	debDir := filepath.Join(b.cacheDir, "deb")
	b.start("lookup")
	if k, err := b.findCached(ctx, debDir); k != nil || err != nil {
		return k, err
	}

	b.start("lock")
	unlock, err := b.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	b.start("fetch")
	deb, err := b.fetchDeb(ctx, debDir)
	if err != nil {
		return nil, err
	}
	k, buildKey, err := b.kernelFor(ctx, deb)
	if err != nil {
		return nil, err
	}
	if b.upToDate(k, buildKey) {
		return k, nil
	}

	b.start("unpack")
	srcKey, err := sourceKey(deb, b.patches)
	if err != nil {
		return nil, err
	}
	srcDir := filepath.Join(b.cacheDir, "src", strings.TrimSuffix(filepath.Base(deb), ".deb")+"-"+srcKey[:16])
	tree, err := b.unpack(ctx, deb, srcDir, b.patches)
	if err != nil {
		return nil, err
	}
	if err := b.configure(ctx, tree, k); err != nil {
		return nil, err
	}
	if err := b.makeAll(ctx, tree, k); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(k.BuildDir, stampName), []byte(buildKey+"\n"), 0o644); err != nil {
		return nil, err
	}
	return k, nil
}

// findCached returns the finished build for the cached source package, or
// nil when there is no package or no finished build for it yet.
func (b *builder) findCached(ctx context.Context, debDir string) (*Kernel, error) {
	deb, err := newestDeb(debDir, b.src.Package)
	if err != nil || deb == "" {
		return nil, err
	}
	k, buildKey, err := b.kernelFor(ctx, deb)
	if err != nil || !b.upToDate(k, buildKey) {
		return nil, err
	}
	return k, nil
}

// kernelFor returns the kernel that the source package deb and the
// options give, and its build key. It does not check that it was built.
func (b *builder) kernelFor(ctx context.Context, deb string) (*Kernel, string, error) {
	srcKey, err := sourceKey(deb, b.patches)
	if err != nil {
		return nil, "", err
	}
	buildKey := b.buildKey(ctx, srcKey)
	name := "linux-" + b.opts.Version
	if b.opts.Variant != "" {
		name += "-" + b.opts.Variant
	}
	k := &Kernel{
		Version:  b.opts.Version,
		Variant:  b.opts.Variant,
		BuildDir: filepath.Join(b.cacheDir, name+"-"+buildKey[:16]),
	}
	k.Image = filepath.Join(k.BuildDir, "arch/x86/boot/bzImage")
	k.Log = filepath.Join(k.BuildDir, logName)
	return k, buildKey, nil
}

// upToDate reports whether k's build directory contains a finished build
// with buildKey, and marks k as cached if so. The stamp is written last,
// so a build that failed or was interrupted never counts.
func (b *builder) upToDate(k *Kernel, buildKey string) bool {
	stamp, err := os.ReadFile(filepath.Join(k.BuildDir, stampName))
	if err != nil || strings.TrimSpace(string(stamp)) != buildKey {
		return false
	}
	if _, err := os.Stat(k.Image); err != nil {
		return false
	}
	b.phase("build", "kernel %s is up to date in %s", k.Name(), k.BuildDir)
	k.Cached = true
	return true
}

// Name returns the version and, for a variant, the variant, as in
// "6.1-debug".
func (k *Kernel) Name() string {
	if k.Variant == "" {
		return k.Version
	}
	return k.Version + "-" + k.Variant
}

// lock takes an exclusive lock on the cache, so two builds do not unpack
// or build into the same directories at once.
func (b *builder) lock() (func(), error) {
	path := filepath.Join(b.cacheDir, "kbuild.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		fmt.Fprintf(b.opts.Progress, "kbuild: waiting for another kernel build to release %s\n", path)
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// sourceKey hashes what determines a source tree: the package file name,
// which contains its version, and the patches.
func sourceKey(deb string, patches []string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "deb %s\n", filepath.Base(deb))
	for _, p := range patches {
		data, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "patch %s %d\n", filepath.Base(p), len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildKey hashes what determines a build directory on top of the source
// tree: the fragments, the recipe and the compiler.
func (b *builder) buildKey(ctx context.Context, srcKey string) string {
	h := sha256.New()
	fmt.Fprintf(h, "source %s\nrecipe %s\nversion %s\n", srcKey, recipe, b.opts.Version)
	if b.opts.Variant != "" {
		// Written only for variants, so that the keys of existing
		// test kernel builds stay valid.
		fmt.Fprintf(h, "variant %s\n", b.opts.Variant)
	}
	fmt.Fprintf(h, "fragments %d\n", len(b.fragment))
	h.Write(b.fragment)
	out, _ := exec.CommandContext(ctx, "gcc", "--version").Output()
	gcc, _, _ := strings.Cut(string(out), "\n")
	fmt.Fprintf(h, "gcc %s\n", gcc)
	return hex.EncodeToString(h.Sum(nil))
}

// configure runs allnoconfig with the fragments and checks the result.
func (b *builder) configure(ctx context.Context, tree string, k *Kernel) error {
	b.start("config")
	if err := os.MkdirAll(k.BuildDir, 0o755); err != nil {
		return err
	}
	frag := filepath.Join(k.BuildDir, fragName)
	if err := os.WriteFile(frag, b.fragment, 0o644); err != nil {
		return err
	}
	if err := os.Remove(k.Log); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	b.phase("config", "make allnoconfig with %d requested symbols (log: %s)", len(b.requests), k.Log)
	if err := b.runMake(ctx, tree, k, "KCONFIG_ALLCONFIG="+frag, "allnoconfig"); err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(k.BuildDir, ".config"))
	if err != nil {
		return err
	}
	defer f.Close()
	got, err := ParseConfig(f)
	if err != nil {
		return fmt.Errorf("parse %s: %w", f.Name(), err)
	}
	if err := CheckConfig(b.requests, got); err != nil {
		return fmt.Errorf("configure kernel %s: %w (fragments: %s)", k.Name(), err, frag)
	}
	return nil
}

// makeAll runs make all and checks that the files modules need exist.
func (b *builder) makeAll(ctx context.Context, tree string, k *Kernel) error {
	b.start("build")
	b.phase("build", "make -j%d all in %s (log: %s)", b.opts.Jobs, k.BuildDir, k.Log)
	stop := b.reportProgress(k.Log, progressInterval)
	err := b.runMake(ctx, tree, k, "-j"+strconv.Itoa(b.opts.Jobs), "all")
	stop()
	if err != nil {
		return err
	}
	for _, name := range []string{k.Image, filepath.Join(k.BuildDir, "Module.symvers")} {
		if _, err := os.Stat(name); err != nil {
			return fmt.Errorf("build kernel %s: make all succeeded but %w", k.Name(), err)
		}
	}
	return nil
}

// progressInterval is how often a running build prints a progress line.
const progressInterval = 30 * time.Second

// reportProgress prints, every interval until stop is called, how long
// the build has run, how many files kbuild has compiled and the last one,
// as the build log shows them.
func (b *builder) reportProgress(log string, interval time.Duration) (stop func()) {
	start := time.Now()
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
			}
			data, err := os.ReadFile(log)
			if err != nil {
				continue
			}
			count, last := compileProgress(string(data))
			b.phase("build", "%v, %d files compiled, last %s", time.Since(start).Round(time.Second), count, last)
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// compileProgress counts the CC and AS lines of a kbuild log, one per
// compiled file, and returns the file of the last one.
func compileProgress(log string) (int, string) {
	count, last := 0, ""
	for _, line := range strings.Split(log, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && (fields[0] == "CC" || fields[0] == "AS") {
			count++
			last = fields[len(fields)-1]
		}
	}
	return count, last
}

// runMake runs make in tree with O= and ARCH= set, appending its output to
// the build log, and shows the log's tail when make fails.
func (b *builder) runMake(ctx context.Context, tree string, k *Kernel, args ...string) error {
	log, err := os.OpenFile(k.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	args = append([]string{"-C", tree, "O=" + k.BuildDir, "ARCH=x86_64"}, args...)
	fmt.Fprintf(log, "+ make %s\n", strings.Join(args, " "))
	cmd := command(ctx, "make", args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("run make %s: %w", args[len(args)-1], ctx.Err())
		}
		b.showTail(k.Log)
		return fmt.Errorf("run make %s: %w (log: %s)", args[len(args)-1], err, k.Log)
	}
	return nil
}

func (b *builder) showTail(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > logTail {
		lines = lines[len(lines)-logTail:]
	}
	fmt.Fprintf(b.opts.Progress, "kbuild: last %d lines of %s:\n", len(lines), path)
	for _, line := range lines {
		fmt.Fprintf(b.opts.Progress, "  %s\n", line)
	}
}

// runQuiet runs a command in dir and includes its output in the error only
// when it fails.
func (b *builder) runQuiet(ctx context.Context, dir, name string, args ...string) error {
	cmd := command(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// command returns a command in its own process group, so that canceling
// ctx stops make together with the compilers it started.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	return cmd
}

// start ends the running phase and starts the named one.
func (b *builder) start(name string) {
	now := time.Now()
	if n := len(b.phases); n > 0 && b.phases[n-1].end.IsZero() {
		b.phases[n-1].end = now
	}
	b.phases = append(b.phases, phaseTime{name: name, start: now})
}

func (b *builder) phase(name, format string, args ...any) {
	fmt.Fprintf(b.opts.Progress, "kbuild: %s: %s\n", name, fmt.Sprintf(format, args...))
}

// summary prints one line with the time of each phase.
func (b *builder) summary(err error) {
	b.start("")
	parts := make([]string, 0, len(b.phases))
	for _, p := range b.phases[:len(b.phases)-1] {
		parts = append(parts, fmt.Sprintf("%s %s", p.name, p.end.Sub(p.start).Round(time.Second/10)))
	}
	status := "done"
	if err != nil {
		status = "failed"
	}
	fmt.Fprintf(b.opts.Progress, "kbuild: %s in %s (%s)\n", status, time.Since(b.begin).Round(time.Second/10), strings.Join(parts, ", "))
}
