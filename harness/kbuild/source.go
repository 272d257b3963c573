package kbuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Source is a kernel source package from the Debian archive.
type Source struct {
	Package string // Debian binary package, fetched with apt-get download
	Tarball string // path of the source tarball inside the package
	TopDir  string // top directory inside the tarball
}

// Sources maps each supported kernel version to its source package. A new
// version also needs kernel-config/<version>.config and, if the kernel
// needs changes, kernel-config/<version>/*.patch.
//
// NOTE: Debian 12 carries only linux-source-6.1. A 5.10 or 6.12 entry
// needs an apt source that provides linux-source-5.10 (Debian 11) or
// linux-source-6.12 (Debian 13 or bookworm-backports).
var Sources = map[string]Source{
	"6.1": {
		Package: "linux-source-6.1",
		Tarball: "usr/src/linux-source-6.1.tar.xz",
		TopDir:  "linux-source-6.1",
	},
}

// Versions returns the supported kernel versions, sorted.
func Versions() []string {
	versions := make([]string, 0, len(Sources))
	for v := range Sources {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	return versions
}

// fetchDeb returns the source package in debDir, downloading it with
// apt-get download when no copy is there. When apt-get download fails it
// runs apt-get update once and tries again.
func (b *builder) fetchDeb(ctx context.Context, debDir string) (string, error) {
	deb, err := newestDeb(debDir, b.src.Package)
	if err != nil {
		return "", err
	}
	if deb != "" {
		b.phase("fetch", "using cached %s", deb)
		return deb, nil
	}

	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return "", err
	}
	b.phase("fetch", "apt-get download %s into %s", b.src.Package, debDir)
	if err := b.runQuiet(ctx, debDir, "apt-get", "download", b.src.Package); err != nil {
		b.phase("fetch", "apt-get download failed (%v), running apt-get update", err)
		if err := b.runQuiet(ctx, debDir, "apt-get", "update"); err != nil {
			return "", fmt.Errorf("run apt-get update: %w", err)
		}
		if err := b.runQuiet(ctx, debDir, "apt-get", "download", b.src.Package); err != nil {
			return "", fmt.Errorf("download %s: %w", b.src.Package, err)
		}
	}
	deb, err = newestDeb(debDir, b.src.Package)
	if err == nil && deb == "" {
		err = fmt.Errorf("download %s: apt-get left no %s_*.deb in %s", b.src.Package, b.src.Package, debDir)
	}
	return deb, err
}

// newestDeb returns the most recently modified pkg_*.deb in dir, or "" if
// there is none. A newer source package is fetched only after the old one
// is deleted from the cache.
func newestDeb(dir, pkg string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil || len(matches) == 0 {
		return "", err
	}
	newest := ""
	var newestTime int64
	for _, m := range matches {
		info, err := os.Stat(m)
		if err != nil {
			return "", err
		}
		if t := info.ModTime().UnixNano(); newest == "" || t > newestTime {
			newest, newestTime = m, t
		}
	}
	return newest, nil
}

// unpack extracts the kernel tree from deb into dir (dir/<TopDir>) and
// applies patches with patch -p1. The tree appears under dir only after
// every step succeeded.
func (b *builder) unpack(ctx context.Context, deb, dir string, patches []string) (string, error) {
	tree := filepath.Join(dir, b.src.TopDir)
	if _, err := os.Stat(tree); err == nil {
		b.phase("unpack", "using cached source tree %s", tree)
		return tree, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)

	b.phase("unpack", "dpkg-deb -x %s, then tar -xf %s", filepath.Base(deb), b.src.Tarball)
	debRoot := filepath.Join(tmp, "deb")
	if err := b.runQuiet(ctx, tmp, "dpkg-deb", "-x", deb, debRoot); err != nil {
		return "", fmt.Errorf("extract %s: %w", deb, err)
	}
	tarball := filepath.Join(debRoot, b.src.Tarball)
	if err := b.runQuiet(ctx, tmp, "tar", "-xf", tarball, "-C", tmp); err != nil {
		return "", fmt.Errorf("extract %s: %w", tarball, err)
	}
	if err := os.RemoveAll(debRoot); err != nil {
		return "", err
	}
	tmpTree := filepath.Join(tmp, b.src.TopDir)
	if _, err := os.Stat(tmpTree); err != nil {
		return "", fmt.Errorf("find source tree: %s has no %s directory: %w", b.src.Tarball, b.src.TopDir, err)
	}

	if len(patches) > 0 {
		b.start("patch")
		for _, p := range patches {
			b.phase("patch", "patch -p1 < %s", p)
			if err := b.runQuiet(ctx, tmpTree, "patch", "-p1", "--forward", "--batch", "-i", p); err != nil {
				return "", fmt.Errorf("apply %s: %w", p, err)
			}
		}
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmpTree, tree); err != nil {
		return "", err
	}
	return tree, nil
}

// findPatches returns kernel-config/<version>/*.patch, sorted by name.
func findPatches(configDir, version string) ([]string, error) {
	patches, err := filepath.Glob(filepath.Join(configDir, version, "*.patch"))
	if err != nil {
		return nil, err
	}
	slices.Sort(patches)
	return patches, nil
}

// checkTools reports every missing program that fetching, unpacking and
// building the kernel run.
func checkTools(lookPath func(string) (string, error)) error {
	tools := []string{"apt-get", "bc", "bison", "dpkg-deb", "flex", "gcc", "make", "patch", "perl", "tar", "xz"}
	var missing []string
	for _, tool := range tools {
		if _, err := lookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("find build tools: %s not in PATH; install the Debian packages build-essential bc bison flex libelf-dev xz-utils patch",
			strings.Join(missing, ", "))
	}
	return nil
}

var errUnknownVersion = errors.New("unsupported kernel version")
