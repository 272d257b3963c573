package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFilesT writes name-to-content files under dir.
func writeFilesT(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckFlag(t *testing.T) {
	configDir := t.TempDir()
	writeFilesT(t, configDir, map[string]string{"base.config": "CONFIG_DEVTMPFS=y\n"})
	kdir := t.TempDir()
	writeFilesT(t, kdir, map[string]string{
		".config":                       "CONFIG_X86_64=y\nCONFIG_MODULES=y\nCONFIG_MODULE_UNLOAD=y\nCONFIG_USERMODE_DRIVER=y\nCONFIG_DEVTMPFS=y\n",
		"include/config/kernel.release": "6.12.118\n",
		"Module.symvers":                "",
		"arch/x86/boot/bzImage":         "",
	})

	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"-config-dir", configDir, "-check", kdir}, &stdout, &stderr); err != nil {
		t.Fatalf("run -check = %v, want nil", err)
	}
	if !strings.Contains(stdout.String(), "Linux 6.12.118") {
		t.Errorf("stdout = %q, want the kernel release", stdout.String())
	}

	writeFilesT(t, kdir, map[string]string{".config": "CONFIG_X86_64=y\nCONFIG_MODULES=y\n"})
	err := run(context.Background(), []string{"-config-dir", configDir, "-check", kdir}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "CONFIG_USERMODE_DRIVER=y (got n)") {
		t.Errorf("run -check without USERMODE_DRIVER = %v, want an error naming CONFIG_USERMODE_DRIVER", err)
	}
}

func TestUnknownVariantFlag(t *testing.T) {
	configDir := t.TempDir()
	writeFilesT(t, configDir, map[string]string{"base.config": "", "6.1.config": ""})
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-config-dir", configDir, "-variant", "kcsan"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), `unknown kernel variant "kcsan"`) {
		t.Errorf("run -variant kcsan = %v, want an unknown variant error", err)
	}
}
