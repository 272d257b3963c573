package kbuild

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBuildDirT writes a kernel build directory with the given .config
// and kernel release, plus the files a finished build has.
func fakeBuildDirT(t testing.TB, config, release string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		".config":                       config,
		"include/config/kernel.release": release + "\n",
		"Module.symvers":                "",
		"arch/x86/boot/bzImage":         "",
	}
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// configDirT writes a base.config with two settings.
func configDirT(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	base := "CONFIG_SERIAL_8250_CONSOLE=y\nCONFIG_DEVTMPFS=y\n"
	if err := os.WriteFile(filepath.Join(dir, "base.config"), []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

const goodConfig = `CONFIG_X86_64=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_USERMODE_DRIVER=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_DEVTMPFS=y
`

func TestCheckBuildDirGood(t *testing.T) {
	r, err := CheckBuildDir(configDirT(t), fakeBuildDirT(t, goodConfig, "6.1.192"))
	if err != nil {
		t.Fatalf("CheckBuildDir = %v, want nil", err)
	}
	if !r.OK() || r.Release != "6.1.192" {
		t.Errorf("report = %+v, want OK for release 6.1.192", r)
	}
}

func TestCheckBuildDirWithoutUsermodeDriver(t *testing.T) {
	config := strings.Replace(goodConfig, "CONFIG_USERMODE_DRIVER=y", "# CONFIG_USERMODE_DRIVER is not set", 1)
	config = strings.Replace(config, "CONFIG_DEVTMPFS=y", "", 1)
	r, err := CheckBuildDir(configDirT(t), fakeBuildDirT(t, config, "6.1.192"))
	if !errors.Is(err, errAPIMissing) {
		t.Fatalf("CheckBuildDir error = %v, want errAPIMissing", err)
	}
	if len(r.Module) != 1 || r.Module[0].Want.Name != "CONFIG_USERMODE_DRIVER" {
		t.Errorf("Module = %v, want only CONFIG_USERMODE_DRIVER", r.Module)
	}
	if len(r.Guest) != 1 || r.Guest[0].Want.Name != "CONFIG_DEVTMPFS" {
		t.Errorf("Guest = %v, want only CONFIG_DEVTMPFS", r.Guest)
	}
	for _, want := range []string{"the module needs: CONFIG_USERMODE_DRIVER=y (got n)", "base.config): CONFIG_DEVTMPFS=y (got n)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestCheckBuildDirRelease(t *testing.T) {
	tests := []struct {
		release string
		ok      bool
	}{
		{"5.8.18", false},
		{"5.9.0", true},
		{"5.10.262", true},
		{"6.12.58-debug", true},
		{"6.16.1", true},
		{"6.17.0", false},
		{"7.2.0", false},
		{"custom", false},
	}
	for _, tt := range tests {
		r, err := CheckBuildDir(configDirT(t), fakeBuildDirT(t, goodConfig, tt.release))
		if ok := err == nil; ok != tt.ok {
			t.Errorf("CheckBuildDir(release %s) error = %v, want ok %v", tt.release, err, tt.ok)
			continue
		}
		if !tt.ok && len(r.Problems) != 1 {
			t.Errorf("CheckBuildDir(release %s) problems = %q, want one", tt.release, r.Problems)
		}
	}
}

func TestCheckBuildDirNotABuild(t *testing.T) {
	_, err := CheckBuildDir(configDirT(t), t.TempDir())
	if !errors.Is(err, errAPIMissing) || !strings.Contains(err.Error(), "not a configured kernel build directory") {
		t.Errorf("CheckBuildDir(empty dir) error = %v, want errAPIMissing naming the missing .config", err)
	}
}

func TestCheckBuildDirUnbuilt(t *testing.T) {
	dir := fakeBuildDirT(t, goodConfig, "6.1.192")
	os.Remove(filepath.Join(dir, "Module.symvers"))
	r, err := CheckBuildDir(configDirT(t), dir)
	if err == nil || len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "Module.symvers not found") {
		t.Errorf("CheckBuildDir(no Module.symvers) = %v, problems %q, want Module.symvers not found", err, r.Problems)
	}
}
