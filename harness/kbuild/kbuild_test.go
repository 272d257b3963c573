package kbuild

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	input := `# comment
CONFIG_A=y

CONFIG_B=n
# CONFIG_C is not set
CONFIG_D="ttyS0"
CONFIG_E=0x1000
CONFIG_A=m
`
	got, err := ParseConfig(strings.NewReader(input))
	if err != nil {
		t.Fatalf("ParseConfig error: %v", err)
	}
	want := []Setting{
		{"CONFIG_A", "m"}, // the later assignment wins, in first-seen order
		{"CONFIG_B", "n"},
		{"CONFIG_C", "n"},
		{"CONFIG_D", `"ttyS0"`},
		{"CONFIG_E", "0x1000"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseConfig = %v, want %v", got, want)
	}
}

func TestParseConfigInvalid(t *testing.T) {
	for _, input := range []string{"USERMODE_DRIVER=y", "CONFIG_A y", "CONFIG_A="} {
		if _, err := ParseConfig(strings.NewReader(input)); err == nil {
			t.Errorf("ParseConfig(%q) error = nil, want an error", input)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	requested := []Setting{
		{"CONFIG_BPFILTER", "y"},
		{"CONFIG_BPFILTER_UMH", "n"},
		{"CONFIG_USERMODE_DRIVER", "y"},
		{"CONFIG_ABSENT_N", "n"},
		{"CONFIG_CMDLINE", `"console=ttyS0"`},
	}
	good := []Setting{
		{"CONFIG_BPFILTER", "y"},
		{"CONFIG_BPFILTER_UMH", "n"},
		{"CONFIG_USERMODE_DRIVER", "y"},
		{"CONFIG_CMDLINE", `"console=ttyS0"`},
		{"CONFIG_OTHER", "y"},
	}
	if err := CheckConfig(requested, good); err != nil {
		t.Errorf("CheckConfig(good) = %v, want nil", err)
	}

	bad := []Setting{
		{"CONFIG_BPFILTER", "y"},
		{"CONFIG_BPFILTER_UMH", "m"},
		{"CONFIG_CMDLINE", `"console=tty0"`},
	}
	err := CheckConfig(requested, bad)
	var dropped *DroppedError
	if !errors.As(err, &dropped) {
		t.Fatalf("CheckConfig(bad) = %v, want a *DroppedError", err)
	}
	want := []Dropped{
		{Want: Setting{"CONFIG_BPFILTER_UMH", "n"}, Got: "m"},
		{Want: Setting{"CONFIG_USERMODE_DRIVER", "y"}, Got: "n"},
		{Want: Setting{"CONFIG_CMDLINE", `"console=ttyS0"`}, Got: `"console=tty0"`},
	}
	if !reflect.DeepEqual(dropped.Dropped, want) {
		t.Errorf("Dropped = %v, want %v", dropped.Dropped, want)
	}
	msg := err.Error()
	for _, name := range []string{"CONFIG_BPFILTER_UMH=n (got m)", "CONFIG_USERMODE_DRIVER=y (got n)", "CONFIG_CMDLINE"} {
		if !strings.Contains(msg, name) {
			t.Errorf("error %q does not name %s", msg, name)
		}
	}
}

// TestRepositoryFragments parses the fragments that Build uses for every
// supported version.
func TestRepositoryFragments(t *testing.T) {
	dir := filepath.Join("..", "..", "kernel-config")
	for _, version := range Versions() {
		b := &builder{opts: Options{Version: version, ConfigDir: dir}}
		if err := b.readFragments(); err != nil {
			t.Errorf("version %s: %v", version, err)
			continue
		}
		if !containsSetting(b.requests, Setting{"CONFIG_USERMODE_DRIVER", "y"}) {
			t.Errorf("version %s: fragments do not request CONFIG_USERMODE_DRIVER=y", version)
		}
	}
}

func containsSetting(settings []Setting, s Setting) bool {
	for _, got := range settings {
		if got == s {
			return true
		}
	}
	return false
}

func TestBuildKeyChangesWithFragments(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	ctx := context.Background()
	b := &builder{opts: Options{Version: "6.1"}, fragment: []byte("CONFIG_A=y\n")}
	key := b.buildKey(ctx, "src")
	if again := b.buildKey(ctx, "src"); again != key {
		t.Errorf("buildKey is not stable: %s, then %s", key, again)
	}
	if other := b.buildKey(ctx, "other-src"); other == key {
		t.Error("buildKey ignores the source key")
	}
	b.fragment = []byte("CONFIG_A=n\n")
	if changed := b.buildKey(ctx, "src"); changed == key {
		t.Error("buildKey ignores the fragments")
	}
}

func TestSourceKeyChangesWithPatches(t *testing.T) {
	dir := t.TempDir()
	patch := filepath.Join(dir, "0001-usermode-driver-prompt.patch")
	if err := os.WriteFile(patch, []byte("--- a/x\n+++ b/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deb := "/cache/deb/linux-source-6.1_6.1.192-3_all.deb"
	plain, err := sourceKey(deb, nil)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := sourceKey(deb, []string{patch})
	if err != nil {
		t.Fatal(err)
	}
	if plain == patched {
		t.Error("sourceKey ignores the patches")
	}
	newer, err := sourceKey("/cache/deb/linux-source-6.1_6.1.193-1_all.deb", nil)
	if err != nil {
		t.Fatal(err)
	}
	if newer == plain {
		t.Error("sourceKey ignores the package version")
	}
}

func TestNewestDeb(t *testing.T) {
	dir := t.TempDir()
	if got, err := newestDeb(dir, "linux-source-6.1"); got != "" || err != nil {
		t.Errorf("newestDeb(empty dir) = %q, %v, want \"\", nil", got, err)
	}
	old := filepath.Join(dir, "linux-source-6.1_6.1.192-2_all.deb")
	newer := filepath.Join(dir, "linux-source-6.1_6.1.192-3_all.deb")
	for _, name := range []string{old, newer, filepath.Join(dir, "linux-source-6.12_6.12.1-1_all.deb")} {
		if err := os.WriteFile(name, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	info, err := os.Stat(newer)
	if err != nil {
		t.Fatal(err)
	}
	oldTime := info.ModTime().Add(-time.Hour)
	if err := os.Chtimes(old, oldTime, oldTime); err != nil {
		t.Fatal(err)
	}
	if got, err := newestDeb(dir, "linux-source-6.1"); got != newer || err != nil {
		t.Errorf("newestDeb = %q, %v, want %q", got, err, newer)
	}
}

func TestCheckTools(t *testing.T) {
	missing := map[string]bool{"flex": true, "bison": true}
	lookPath := func(name string) (string, error) {
		if missing[name] {
			return "", exec.ErrNotFound
		}
		return "/usr/bin/" + name, nil
	}
	err := checkTools(lookPath)
	if err == nil {
		t.Fatal("checkTools = nil, want an error naming flex and bison")
	}
	if msg := err.Error(); !strings.Contains(msg, "bison, flex") {
		t.Errorf("checkTools error %q does not name bison and flex", msg)
	}
	if err := checkTools(func(name string) (string, error) { return "/usr/bin/" + name, nil }); err != nil {
		t.Errorf("checkTools with every tool = %v, want nil", err)
	}
}

func TestUnknownVersion(t *testing.T) {
	_, err := newBuilder(Options{Version: "4.19", ConfigDir: t.TempDir()})
	if !errors.Is(err, errUnknownVersion) {
		t.Errorf("newBuilder(4.19) error = %v, want errUnknownVersion", err)
	}
}

func TestVersionsSorted(t *testing.T) {
	got := Versions()
	want := []string{"5.10", "6.1", "6.12"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Versions() = %v, want %v", got, want)
	}
}

func TestSourcesList(t *testing.T) {
	src := Sources["5.10"]
	got := sourcesList(src, "http://mirror.example/", true)
	want := "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bullseye main\n" +
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian-security bullseye-security main\n"
	if got != want {
		t.Errorf("sourcesList(5.10) =\n%s\nwant\n%s", got, want)
	}
	if got := sourcesList(src, DefaultMirror, false); strings.Contains(got, "signed-by") {
		t.Errorf("sourcesList without the keyring = %q, want no signed-by option", got)
	}
}

func TestVariantFragments(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"base.config":      "CONFIG_A=y\nCONFIG_B=y\n",
		"6.1.config":       "CONFIG_C=y\n",
		"debug.config":     "CONFIG_D=y\nCONFIG_E=y\n",
		"6.1/debug.config": "CONFIG_E=n\n",
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

	b := &builder{opts: Options{Version: "6.1", Variant: "debug", ConfigDir: dir}}
	if err := b.readFragments(); err != nil {
		t.Fatalf("readFragments(debug) error: %v", err)
	}
	want := []Setting{{"CONFIG_A", "y"}, {"CONFIG_B", "y"}, {"CONFIG_C", "y"}, {"CONFIG_D", "y"}, {"CONFIG_E", "n"}}
	if !reflect.DeepEqual(b.requests, want) {
		t.Errorf("requests = %v, want %v", b.requests, want)
	}

	b = &builder{opts: Options{Version: "6.1", Variant: "kcsan", ConfigDir: dir}}
	if err := b.readFragments(); !errors.Is(err, errUnknownVariant) {
		t.Errorf("readFragments(kcsan) error = %v, want errUnknownVariant", err)
	}
}

func TestInvalidVariant(t *testing.T) {
	for _, variant := range []string{"../debug", "Debug", "debug.config", "-x"} {
		if _, err := newBuilder(Options{Version: "6.1", Variant: variant, ConfigDir: t.TempDir()}); err == nil {
			t.Errorf("newBuilder(variant %q) error = nil, want an error", variant)
		}
	}
}

// TestRepositoryVariants parses every variant fragment in kernel-config
// for every supported version.
func TestRepositoryVariants(t *testing.T) {
	dir := filepath.Join("..", "..", "kernel-config")
	for _, variant := range []string{"debug", "gdb"} {
		for _, version := range Versions() {
			b := &builder{opts: Options{Version: version, Variant: variant, ConfigDir: dir}}
			if err := b.readFragments(); err != nil {
				t.Errorf("version %s, variant %s: %v", version, variant, err)
			}
		}
	}
}

func TestBuildKeyChangesWithVariant(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	ctx := context.Background()
	b := &builder{opts: Options{Version: "6.1"}, fragment: []byte("CONFIG_A=y\n")}
	plain := b.buildKey(ctx, "src")
	b.opts.Variant = "debug"
	if debug := b.buildKey(ctx, "src"); debug == plain {
		t.Error("buildKey ignores the variant")
	}
}

func TestCompileProgress(t *testing.T) {
	log := `+ make -C /src O=/build ARCH=x86_64 -j2 all
  SYNC    include/config/auto.conf
  CC      scripts/mod/empty.o
  HOSTCC  scripts/kallsyms
  AS      arch/x86/entry/entry_64.o
  CC [M]  /src/kmod/umhblob_main.o
  CC      net/ipv4/tcp_timer.o
  LD      vmlinux.o
`
	count, last := compileProgress(log)
	if count != 4 || last != "net/ipv4/tcp_timer.o" {
		t.Errorf("compileProgress = %d, %q, want 4, net/ipv4/tcp_timer.o", count, last)
	}
}
