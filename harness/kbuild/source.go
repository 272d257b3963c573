package kbuild

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Source is a kernel source package from the Debian archive.
type Source struct {
	Package string  // Debian binary package, fetched with apt-get download
	Tarball string  // path of the source tarball inside the package
	TopDir  string  // top directory inside the tarball
	Suites  []Suite // the archive suites that contain Package
}

// Suite is one line of the private sources.list that fetches a source
// package: "deb <mirror>/<Archive> <Name> main".
type Suite struct {
	Archive string // path on the mirror: "debian" or "debian-security"
	Name    string // suite name, for example "bullseye-security"
}

// Sources maps each supported kernel version to its source package. A new
// version also needs kernel-config/<version>.config and, if the kernel
// needs changes, kernel-config/<version>/*.patch.
//
// Each package is fetched through a private sources.list that names only
// its suites, so the host's own apt sources do not matter. 5.10 comes from
// Debian 11 even on a Debian 12 host. Hosts that are not Debian work too
// when they have apt and the Debian archive keyring.
var Sources = map[string]Source{
	"5.10": {
		Package: "linux-source-5.10",
		Tarball: "usr/src/linux-source-5.10.tar.xz",
		TopDir:  "linux-source-5.10",
		Suites:  []Suite{{"debian", "bullseye"}, {"debian-security", "bullseye-security"}},
	},
	"6.1": {
		Package: "linux-source-6.1",
		Tarball: "usr/src/linux-source-6.1.tar.xz",
		TopDir:  "linux-source-6.1",
		Suites:  []Suite{{"debian", "bookworm"}, {"debian-security", "bookworm-security"}},
	},
	"6.12": {
		Package: "linux-source-6.12",
		Tarball: "usr/src/linux-source-6.12.tar.xz",
		TopDir:  "linux-source-6.12",
		Suites:  []Suite{{"debian-security", "bookworm-security"}},
	},
}

// DefaultMirror is the Debian mirror that the private sources.list names
// unless UMHBLOB_DEBIAN_MIRROR is set.
const DefaultMirror = "http://deb.debian.org"

// archiveKeyring is the keyring of package debian-archive-keyring. On
// Debian 12 it also contains the Debian 11 keys.
const archiveKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// Versions returns the supported kernel versions, sorted by version
// number.
func Versions() []string {
	versions := make([]string, 0, len(Sources))
	for v := range Sources {
		versions = append(versions, v)
	}
	slices.SortFunc(versions, compareVersions)
	return versions
}

// compareVersions orders "major.minor" strings numerically, so that 6.12
// sorts after 6.1.
func compareVersions(a, b string) int {
	aMajor, aMinor, _ := strings.Cut(a, ".")
	bMajor, bMinor, _ := strings.Cut(b, ".")
	if c := cmp.Compare(atoiOrZero(aMajor), atoiOrZero(bMajor)); c != 0 {
		return c
	}
	if c := cmp.Compare(atoiOrZero(aMinor), atoiOrZero(bMinor)); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func atoiOrZero(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// sourcesList returns the private sources.list for src. The lines name
// the archive keyring when it is installed, and otherwise leave the key
// choice to apt's trusted.gpg.d.
func sourcesList(src Source, mirror string, keyringExists bool) string {
	options := ""
	if keyringExists {
		options = "[signed-by=" + archiveKeyring + "] "
	}
	var b strings.Builder
	for _, s := range src.Suites {
		fmt.Fprintf(&b, "deb %s%s/%s %s main\n", options, strings.TrimRight(mirror, "/"), s.Archive, s.Name)
	}
	return b.String()
}

// aptOptions returns the apt-get options that make apt read the private
// sources.list in dir and keep its package lists and caches in dir, so
// the host's apt state is neither read nor changed.
func aptOptions(dir string) []string {
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "Acquire::Languages=none",
	}
	if os.Geteuid() == 0 {
		// apt's _apt user cannot write into root's cache directory.
		// Without this option apt downloads as root anyway, with a
		// warning.
		opts = append(opts, "-o", "APT::Sandbox::User=root")
	}
	return opts
}

// fetchDeb returns the source package in debDir, downloading it when no
// copy is there. The download runs apt-get update and apt-get download
// with a private sources.list in <cache>/apt/<version>.
func (b *builder) fetchDeb(ctx context.Context, debDir string) (string, error) {
	deb, err := newestDeb(debDir, b.src.Package)
	if err != nil {
		return "", err
	}
	if deb != "" {
		b.phase("fetch", "using cached %s", deb)
		return deb, nil
	}

	aptDir := filepath.Join(b.cacheDir, "apt", b.opts.Version)
	for _, dir := range []string{debDir, filepath.Join(aptDir, "lists", "partial"), filepath.Join(aptDir, "cache", "archives", "partial")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
	}
	mirror := cmp.Or(os.Getenv("UMHBLOB_DEBIAN_MIRROR"), DefaultMirror)
	_, keyErr := os.Stat(archiveKeyring)
	list := sourcesList(b.src, mirror, keyErr == nil)
	if err := os.WriteFile(filepath.Join(aptDir, "sources.list"), []byte(list), 0o644); err != nil {
		return "", err
	}
	opts := aptOptions(aptDir)

	b.phase("fetch", "apt-get update with %s", filepath.Join(aptDir, "sources.list"))
	if err := b.runQuiet(ctx, debDir, "apt-get", append(opts, "update")...); err != nil {
		return "", fmt.Errorf("run apt-get update for %s: %w", b.src.Package, err)
	}
	b.phase("fetch", "apt-get download %s into %s", b.src.Package, debDir)
	if err := b.runQuiet(ctx, debDir, "apt-get", append(opts, "download", b.src.Package)...); err != nil {
		return "", fmt.Errorf("download %s: %w", b.src.Package, err)
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

var (
	errUnknownVersion = errors.New("unsupported kernel version")
	errUnknownVariant = errors.New("unknown kernel variant")
)
