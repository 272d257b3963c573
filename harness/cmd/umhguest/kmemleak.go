package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	debugfsDir   = "/sys/kernel/debug"
	kmemleakFile = debugfsDir + "/kmemleak"
	// kmemleakPause separates the two scans. A scan reports an
	// unreferenced object only when it is older than 5 s and its
	// contents did not change since the previous scan (MSECS_MIN_AGE and
	// update_checksum in mm/kmemleak.c), so a leak can need a second
	// scan to show.
	kmemleakPause = time.Second

	// kmemleakObject starts each object in a kmemleak report, and a
	// failed step shows the first kmemleakShown of them, because each
	// takes a dozen lines with its backtrace.
	kmemleakObject = "unreferenced object"
	kmemleakShown  = 3
)

// prepareKmemleak mounts debugfs if needed and clears the objects that
// kmemleak already suspects, so the final scan reports only what the
// steps leaked. It runs before the first insmod. On a kernel without
// kmemleak it records why and leaves /proc/mounts as it was.
func (g *guest) prepareKmemleak() {
	if _, err := os.Stat(kmemleakFile); err != nil {
		if _, err := os.Stat(debugfsDir); err != nil {
			g.kmemleakMissing = fmt.Sprintf("no %s, the kernel has no debugfs", debugfsDir)
			return
		}
		if err := unix.Mount("debugfs", debugfsDir, "debugfs", 0, ""); err != nil {
			g.kmemleakMissing = fmt.Sprintf("mount debugfs on %s: %v", debugfsDir, err)
			return
		}
		if _, err := os.Stat(kmemleakFile); err != nil {
			unix.Unmount(debugfsDir, 0)
			g.kmemleakMissing = fmt.Sprintf("no %s, the kernel has no kmemleak", kmemleakFile)
			return
		}
	}
	if err := os.WriteFile(kmemleakFile, []byte("clear"), 0); err != nil {
		g.kmemleakErr = fmt.Errorf("clear %s before the first insmod: %w", kmemleakFile, err)
	}
}

// kmemleak scans for leaked kernel objects twice and fails with the
// report when there is one.
func (g *guest) kmemleak() (string, error) {
	if g.kmemleakMissing != "" {
		return "kmemleak not available: " + g.kmemleakMissing, nil
	}
	if g.kmemleakErr != nil {
		return "", g.kmemleakErr
	}
	if moduleLoaded() {
		if _, err := g.unloadChecked(); err != nil {
			return "", err
		}
	}
	for i := range 2 {
		if i > 0 {
			time.Sleep(kmemleakPause)
		}
		if err := os.WriteFile(kmemleakFile, []byte("scan"), 0); err != nil {
			return "", fmt.Errorf("scan %d of 2: %w", i+1, err)
		}
	}
	data, err := os.ReadFile(kmemleakFile)
	if err != nil {
		return "", err
	}
	report := strings.TrimSpace(string(data))
	if report == "" {
		return "kmemleak found no unreferenced objects after two scans", nil
	}
	leaks := strings.Count(report, kmemleakObject)
	return "", fmt.Errorf("kmemleak reports %d unreferenced objects, the first %d: %s", leaks, min(leaks, kmemleakShown), firstLeaks(report, kmemleakShown))
}

// firstLeaks returns the first n object reports of a kmemleak report.
func firstLeaks(report string, n int) string {
	parts := strings.SplitAfter(report, kmemleakObject)
	if len(parts) <= n+1 {
		return report
	}
	return strings.TrimSuffix(strings.Join(parts[:n+1], ""), kmemleakObject)
}
