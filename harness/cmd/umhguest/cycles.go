package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/umhblob/umhblob/harness/report"
	"github.com/umhblob/umhblob/proto"
)

// cycleCount is the number of load and unload cycles of the cycles step,
// which reports its progress every cycleProgress cycles.
const (
	cycleCount    = 200
	cycleProgress = 50
)

// Largest growth over cycleCount cycles that the cycles step accepts. A
// leaked helper blob would grow Shmem by about 1.6 MiB per cycle, and a
// leaked pipe pair nr_files by 2 per cycle. nr_files is a per-CPU counter
// that /proc/sys/fs/file-nr reads without summing the CPUs' deltas
// (get_nr_files in fs/file_table.c, Linux 6.1), so it can be off by a few
// dozen. Slab and MemAvailable move with caches and with kernel objects
// freed after an RCU grace period.
const (
	fileLimit         = 64
	shmemLimitKiB     = 1024
	slabLimitKiB      = 2048
	availableLimitKiB = 8192
)

// leakFigures is the set of figures that the cycles step compares before
// and after the cycles.
type leakFigures struct {
	files        int64 // first field of /proc/sys/fs/file-nr: allocated files
	mounts       string
	memAvailable int64 // KiB
	slab         int64 // KiB
	shmem        int64 // KiB
}

// readLeakFigures drops the page cache, dentries and inodes, waits for
// objects freed after an RCU grace period, and reads the figures.
func readLeakFigures() (leakFigures, error) {
	var f leakFigures
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return f, err
	}
	time.Sleep(200 * time.Millisecond)

	fileNr, err := os.ReadFile("/proc/sys/fs/file-nr")
	if err != nil {
		return f, err
	}
	fields := strings.Fields(string(fileNr))
	if len(fields) == 0 {
		return f, fmt.Errorf("parse /proc/sys/fs/file-nr %q: empty", fileNr)
	}
	if f.files, err = strconv.ParseInt(fields[0], 10, 64); err != nil {
		return f, fmt.Errorf("parse /proc/sys/fs/file-nr: %w", err)
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return f, err
	}
	f.mounts = string(mounts)
	for name, dst := range map[string]*int64{"MemAvailable": &f.memAvailable, "Slab": &f.slab, "Shmem": &f.shmem} {
		if *dst, err = meminfoKiB(name); err != nil {
			return f, err
		}
	}
	return f, nil
}

// cycles loads and unloads the module cycleCount times, with a ping and
// an echo in each cycle, and then compares open files, mounts and memory
// with the figures from before the first cycle.
func (g *guest) cycles() (string, error) {
	if moduleLoaded() {
		if _, err := g.unloadChecked(); err != nil {
			return "", err
		}
	}
	before, err := readLeakFigures()
	if err != nil {
		return "", err
	}
	var loads, unloads, worstLoad, worstUnload time.Duration
	start := time.Now()
	for cycle := 1; cycle <= cycleCount; cycle++ {
		load, unload, err := g.cycle()
		if err != nil {
			return "", fmt.Errorf("cycle %d of %d: %w", cycle, cycleCount, err)
		}
		loads += load
		unloads += unload
		worstLoad = max(worstLoad, load)
		worstUnload = max(worstUnload, unload)
		if cycle%cycleProgress == 0 && cycle < cycleCount {
			g.info("step %s: %d of %d cycles done in %v", report.StepCycles, cycle, cycleCount, time.Since(start).Round(time.Second))
		}
	}
	elapsed := time.Since(start)
	after, err := readLeakFigures()
	if err != nil {
		return "", err
	}

	detail := fmt.Sprintf("%d cycles in %v: insmod average %v, max %v; rmmod average %v, max %v; "+
		"files %d -> %d, MemAvailable %d -> %d KiB, Slab %d -> %d KiB, Shmem %d -> %d KiB, /proc/mounts %s",
		cycleCount, elapsed.Round(time.Millisecond), (loads / cycleCount).Round(time.Microsecond), worstLoad.Round(time.Microsecond),
		(unloads / cycleCount).Round(time.Microsecond), worstUnload.Round(time.Microsecond),
		before.files, after.files, before.memAvailable, after.memAvailable, before.slab, after.slab, before.shmem, after.shmem,
		mountsVerdict(before.mounts, after.mounts))
	if err := compareLeakFigures(before, after); err != nil {
		return detail, err
	}
	return detail, nil
}

// cycle loads the module, checks its new helper, sends a ping and an
// echo, unloads it and checks that nothing of it is left.
func (g *guest) cycle() (load, unload time.Duration, err error) {
	if load, err = g.load(); err != nil {
		return load, 0, err
	}
	pid, err := readHelperPID()
	if err != nil {
		return load, 0, err
	}
	if _, err := checkHelper(pid); err != nil {
		return load, 0, err
	}
	if slices.Contains(g.pids, pid) {
		return load, 0, fmt.Errorf("helper pid %d was seen before, want a new helper", pid)
	}
	g.pid = pid
	g.pids = append(g.pids, pid)
	if err := g.pingAndEcho(); err != nil {
		return load, 0, err
	}
	unload, err = g.unloadChecked()
	return load, unload, err
}

// pingAndEcho sends a ping and a 4096-byte echo on a new file.
func (g *guest) pingAndEcho() error {
	dev, err := openDevice()
	if err != nil {
		return err
	}
	defer dev.Close()
	if _, err := dev.roundTrip(proto.NewHeader(proto.TypePing, g.newID(), 0), nil); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	if _, err := dev.roundTrip(proto.NewHeader(proto.TypeEcho, g.newID(), 4096), g.payloads.next(4096)); err != nil {
		return fmt.Errorf("echo 4096 B: %w", err)
	}
	return nil
}

func compareLeakFigures(before, after leakFigures) error {
	var problems []string
	if d := after.files - before.files; d > fileLimit {
		problems = append(problems, fmt.Sprintf("allocated files grew by %d, more than %d", d, fileLimit))
	}
	if before.mounts != after.mounts {
		problems = append(problems, fmt.Sprintf("/proc/mounts changed: before %q, after %q", before.mounts, after.mounts))
	}
	if d := before.memAvailable - after.memAvailable; d > availableLimitKiB {
		problems = append(problems, fmt.Sprintf("MemAvailable fell by %d KiB, more than %d KiB", d, availableLimitKiB))
	}
	if d := after.slab - before.slab; d > slabLimitKiB {
		problems = append(problems, fmt.Sprintf("Slab grew by %d KiB, more than %d KiB", d, slabLimitKiB))
	}
	if d := after.shmem - before.shmem; d > shmemLimitKiB {
		problems = append(problems, fmt.Sprintf("Shmem grew by %d KiB, more than %d KiB: helper blobs were not freed", d, shmemLimitKiB))
	}
	if len(problems) > 0 {
		return fmt.Errorf("after %d cycles: %s", cycleCount, strings.Join(problems, "; "))
	}
	return nil
}

func mountsVerdict(before, after string) string {
	if before == after {
		return "unchanged"
	}
	return "changed"
}
