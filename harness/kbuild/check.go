package kbuild

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// The kernels that export umd_load_blob() and fork_usermode_driver():
// Linux 5.9 added them and 6.17 removed them.
const (
	firstAPIVersion = 5<<8 | 9
	endAPIVersion   = 6<<8 | 17
)

// moduleRequests are the settings the module itself needs from a kernel.
var moduleRequests = []Setting{
	{"CONFIG_MODULES", "y"},
	{"CONFIG_MODULE_UNLOAD", "y"},
	{"CONFIG_USERMODE_DRIVER", "y"},
	{"CONFIG_X86_64", "y"},
}

// CheckReport is the outcome of CheckBuildDir.
type CheckReport struct {
	Release  string    // kernel release, from include/config/kernel.release
	Module   []Dropped // module requirements that the .config does not meet
	Guest    []Dropped // base.config settings that the .config does not meet
	Problems []string  // other failed checks: missing files, an unsupported release
}

// OK reports whether the build directory passed every check.
func (r *CheckReport) OK() bool {
	return len(r.Module) == 0 && len(r.Guest) == 0 && len(r.Problems) == 0
}

// String returns one line per failed check, or a one-line summary when
// every check passed.
func (r *CheckReport) String() string {
	if r.OK() {
		return fmt.Sprintf("Linux %s: CONFIG_USERMODE_DRIVER=y, module and VM guest settings present", r.Release)
	}
	var lines []string
	if len(r.Module) > 0 {
		lines = append(lines, "the module needs: "+formatDropped(r.Module))
	}
	if len(r.Guest) > 0 {
		lines = append(lines, "the VM guest needs (kernel-config/base.config): "+formatDropped(r.Guest))
	}
	lines = append(lines, r.Problems...)
	return strings.Join(lines, "\n")
}

func formatDropped(dropped []Dropped) string {
	parts := make([]string, len(dropped))
	for i, d := range dropped {
		parts[i] = fmt.Sprintf("%s (got %s)", d.Want, d.Got)
	}
	return strings.Join(parts, ", ")
}

// errAPIMissing wraps every failed CheckBuildDir.
var errAPIMissing = errors.New("kernel build directory cannot run umhblob")

// CheckBuildDir checks a kernel build directory, a KDIR that the module
// builds against, for what umhblob needs. The release must be 5.9 to 6.16
// and the .config must have moduleRequests and every setting of
// <configDir>/base.config, which the VM guest needs. Module.symvers and
// arch/x86/boot/bzImage must exist. It returns the report, and an error
// wrapping it when a check failed or kdir is not a configured kernel build.
func CheckBuildDir(configDir, kdir string) (*CheckReport, error) {
	f, err := os.Open(filepath.Join(kdir, ".config"))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a configured kernel build directory: %w", errAPIMissing, kdir, err)
	}
	defer f.Close()
	got, err := ParseConfig(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", f.Name(), err)
	}
	base, err := os.ReadFile(filepath.Join(configDir, "base.config"))
	if err != nil {
		return nil, fmt.Errorf("read config fragment: %w", err)
	}
	guestRequests, err := ParseConfig(strings.NewReader(string(base)))
	if err != nil {
		return nil, fmt.Errorf("parse base.config: %w", err)
	}

	r := &CheckReport{}
	r.Module = droppedSettings(moduleRequests, got)
	r.Guest = droppedSettings(guestRequests, got)
	for _, name := range []string{"Module.symvers", "arch/x86/boot/bzImage"} {
		if _, err := os.Stat(filepath.Join(kdir, name)); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("%s not found: run make in %s first", name, kdir))
		}
	}

	release, err := os.ReadFile(filepath.Join(kdir, "include/config/kernel.release"))
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("include/config/kernel.release not found: run make in %s first", kdir))
	} else {
		r.Release = strings.TrimSpace(string(release))
		if msg := checkRelease(r.Release); msg != "" {
			r.Problems = append(r.Problems, msg)
		}
	}
	if !r.OK() {
		return r, fmt.Errorf("%w: %s:\n%s", errAPIMissing, kdir, r)
	}
	return r, nil
}

func droppedSettings(requested, got []Setting) []Dropped {
	var dropped *DroppedError
	if errors.As(CheckConfig(requested, got), &dropped) {
		return dropped.Dropped
	}
	return nil
}

var releaseVersion = regexp.MustCompile(`^([0-9]+)\.([0-9]+)`)

// checkRelease returns why the kernel release cannot provide the user
// mode driver API, or "" when it can.
func checkRelease(release string) string {
	m := releaseVersion.FindStringSubmatch(release)
	if m == nil {
		return fmt.Sprintf("kernel release %q has no major.minor version", release)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if v := major<<8 | minor; v < firstAPIVersion || v >= endAPIVersion {
		return fmt.Sprintf("Linux %s has no umd_load_blob(): only 5.9 to 6.16 have it", release)
	}
	return ""
}
