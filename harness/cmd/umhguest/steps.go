package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/harness/report"
	"github.com/umhblob/umhblob/proto"
)

const (
	echoIterations = 5           // round trips per payload size, for the average
	reloadCycles   = 3           // load and unload cycles after the first one
	goneTimeout    = time.Second // maximum wait for /proc/PID to disappear after rmmod
)

// echoSizes are the payload sizes of the echo step. 1 MiB spans 16 pipe
// buffers of 64 KiB, and MaxPayload is the largest payload the protocol
// allows.
var echoSizes = []int{0, 1, 4096, 1 << 20, proto.MaxPayload}

// steps returns the steps of a run: the basic steps, and outside demo
// mode the fault steps after them.
func steps(demo bool) []step {
	basic := []step{
		{name: report.StepInsmod, timeout: 60 * time.Second, critical: true, run: (*guest).insmod},
		{name: report.StepHelper, timeout: 30 * time.Second, run: (*guest).helper},
		{name: report.StepEcho, timeout: 120 * time.Second, run: (*guest).echo},
		{name: report.StepErrors, timeout: 60 * time.Second, run: (*guest).malformed},
		{name: report.StepStatus, timeout: 30 * time.Second, run: (*guest).status},
		{name: report.StepRmmod, timeout: 60 * time.Second, critical: true, run: (*guest).rmmod},
		{name: report.StepReload, timeout: 180 * time.Second, critical: true, run: (*guest).reload},
		{name: report.StepLeaks, timeout: 30 * time.Second, run: (*guest).leaks},
	}
	if demo {
		return basic
	}
	return append(basic, faultSteps()...)
}

// faultSteps returns the steps that follow the basic steps in a test run.
// Each starts by loading the module and ends by unloading it.
func faultSteps() []step {
	s := []step{
		{name: report.StepSequence, timeout: 120 * time.Second, run: (*guest).sequence},
		{name: report.StepRmmodBusy, timeout: 60 * time.Second, run: (*guest).rmmodBusy},
		{name: report.StepInterruptEINTR, timeout: 60 * time.Second, run: (*guest).interruptEINTR},
		{name: report.StepInterruptRestart, timeout: 60 * time.Second, run: (*guest).interruptRestart},
		{name: report.StepSIGPIPE, timeout: 60 * time.Second, run: (*guest).sigpipe},
	}
	for _, f := range faults() {
		s = append(s, step{name: f.step, timeout: 120 * time.Second, run: func(g *guest) (string, error) { return g.runFault(f) }})
	}
	return append(s,
		step{name: report.StepFaults, timeout: 30 * time.Second, run: (*guest).faultTotals},
		step{name: report.StepCycles, timeout: 300 * time.Second, run: (*guest).cycles},
		step{name: report.StepKmemleak, timeout: 120 * time.Second, run: (*guest).kmemleak},
	)
}

// insmod loads the module. The module starts its helper and completes the
// handshake before init returns, so the time includes both.
func (g *guest) insmod() (string, error) {
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", err
	}
	g.mountsBefore = string(mounts)
	if g.shmemBefore, err = meminfoKiB("Shmem"); err != nil {
		return "", err
	}
	info, err := os.Stat(g.modulePath)
	if err != nil {
		return "", fmt.Errorf("find module: %w", err)
	}
	g.moduleSize = info.Size()
	g.narrate("finit_module(%s), %d bytes", g.modulePath, info.Size())
	elapsed, err := g.load()
	if err != nil {
		return "", err
	}
	g.setSlowdown(elapsed)
	state, err := os.ReadFile("/sys/module/" + moduleName + "/initstate")
	if err != nil {
		return "", fmt.Errorf("module loaded but: %w", err)
	}
	g.narrate("loaded in %v (helper started and handshake done), initstate %s", elapsed.Round(time.Microsecond), strings.TrimSpace(string(state)))
	return fmt.Sprintf("loaded %s (%d bytes) in %v, initstate %s; time limits of later steps scaled by %.1f",
		g.modulePath, info.Size(), elapsed.Round(time.Microsecond), strings.TrimSpace(string(state)), max(1, g.slowdown)), nil
}

// load runs finit_module on the module file and returns how long it took.
func (g *guest) load() (time.Duration, error) {
	fd, err := unix.Open(g.modulePath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", g.modulePath, err)
	}
	defer unix.Close(fd)
	start := time.Now()
	err = unix.FinitModule(fd, "", 0)
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, fmt.Errorf("finit_module %s: %s (%w) after %v", g.modulePath, errnoName(err), err, elapsed.Round(time.Microsecond))
	}
	return elapsed, nil
}

// unload runs delete_module and returns how long it took.
func unload() (time.Duration, error) {
	start := time.Now()
	err := unix.DeleteModule(moduleName, 0)
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, fmt.Errorf("delete_module %s: %s (%w) after %v", moduleName, errnoName(err), err, elapsed.Round(time.Microsecond))
	}
	return elapsed, nil
}

// helper checks the helper process that the module started.
func (g *guest) helper() (string, error) {
	pid, err := readHelperPID()
	if err != nil {
		return "", err
	}
	p, err := checkHelper(pid)
	if err != nil {
		return "", err
	}
	comm, err := os.ReadFile("/proc/2/comm")
	if err != nil {
		return "", err
	}
	if name := strings.TrimSpace(string(comm)); name != "kthreadd" {
		return "", fmt.Errorf("pid 2 is %q, want kthreadd", name)
	}
	g.pid = pid
	g.pids = append(g.pids, pid)
	g.narrate("helper pid %d (from %s/helper_pid), argv[0] %q, parent %d (kthreadd), state %s", pid, sysfsDir, p.Argv0, p.PPID, p.State)
	return fmt.Sprintf("pid %d, argv[0] %s, parent %d (kthreadd), state %s", pid, p.Argv0, p.PPID, p.State), nil
}

// echo sends pings and echo requests of every size in echoSizes through
// the device and checks each reply.
func (g *guest) echo() (string, error) {
	dev, err := openDevice()
	if err != nil {
		return "", err
	}
	defer dev.Close()

	ping, err := g.averageRoundTrip(dev, proto.TypePing, 0, echoIterations)
	if err != nil {
		return "", fmt.Errorf("ping: %w", err)
	}
	g.narrate("ping: %s, average %v", roundTrips(echoIterations), ping.Round(time.Microsecond))
	results := []string{fmt.Sprintf("ping %v", ping.Round(time.Microsecond))}
	for _, size := range echoSizes {
		n := echoIterations
		if size == proto.MaxPayload {
			n = 1 // the boundary case; its time is dominated by copying
		}
		rtt, err := g.averageRoundTrip(dev, proto.TypeEcho, size, n)
		if err != nil {
			return strings.Join(results, ", "), fmt.Errorf("echo %s: %w", formatSize(size), err)
		}
		g.narrate("echo %s: %s, payload identical, average %v", formatSize(size), roundTrips(n), rtt.Round(time.Microsecond))
		results = append(results, fmt.Sprintf("echo %s %v", formatSize(size), rtt.Round(time.Microsecond)))
	}
	return strings.Join(results, ", ") + fmt.Sprintf(" (average of %d round trips, 1 for %s)", echoIterations, formatSize(proto.MaxPayload)), nil
}

// averageRoundTrip sends n requests with fresh payloads of size bytes and
// returns the average round-trip time.
func (g *guest) averageRoundTrip(dev *device, t proto.Type, size, n int) (time.Duration, error) {
	var total time.Duration
	for range n {
		payload := g.payloads.next(size)
		rtt, err := dev.roundTrip(proto.NewHeader(t, g.newID(), size), payload)
		if err != nil {
			return 0, err
		}
		total += rtt
	}
	return total / time.Duration(n), nil
}

// status reads the module's counters in sysfs.
func (g *guest) status() (string, error) {
	names := []string{"helper_pid", "helper_starts", "requests", "errors"}
	values := make(map[string]int64, len(names))
	var parts []string
	for _, name := range names {
		n, err := readNumber(sysfsDir + "/" + name)
		if err != nil {
			return strings.Join(parts, " "), err
		}
		values[name] = n
		parts = append(parts, fmt.Sprintf("%s=%d", name, n))
	}
	detail := strings.Join(parts, " ")
	g.narrate("%s: %s", sysfsDir, detail)
	if values["helper_pid"] != int64(g.pid) {
		return detail, fmt.Errorf("helper_pid is %d, want %d as in step %s", values["helper_pid"], g.pid, report.StepHelper)
	}
	// Malformed requests must not cost the helper its life, so the one
	// helper started at load time is still the only one.
	if values["helper_starts"] != 1 {
		return detail, fmt.Errorf("helper_starts is %d, want 1", values["helper_starts"])
	}
	return detail, nil
}

// rmmod unloads the module and checks that its helper and files are gone.
func (g *guest) rmmod() (string, error) {
	pid := g.pid
	elapsed, err := unload()
	if err != nil {
		return "", err
	}
	g.narrate("delete_module(%s) returned after %v", moduleName, elapsed.Round(time.Microsecond))
	disappearance, err := checkUnloaded(pid)
	if err != nil {
		return fmt.Sprintf("unloaded in %v", elapsed.Round(time.Microsecond)), err
	}
	g.pid = 0
	g.narrate("helper %d: %s; no %s process, no %s, no %s", pid, disappearance, helperName, devicePath, sysfsDir)
	return fmt.Sprintf("unloaded in %v; helper %d %s; no %s process, device or sysfs directory left",
		elapsed.Round(time.Microsecond), pid, disappearance, helperName), nil
}

// checkUnloaded checks that helper pid, every other helper process, the
// device node and the module's sysfs directories are gone, and describes
// when the helper disappeared.
func checkUnloaded(pid int) (string, error) {
	disappearance := "gone"
	if pid > 0 {
		after, state, err := waitGone(pid, goneTimeout)
		if err != nil {
			return "", err
		}
		if state != "" {
			disappearance = fmt.Sprintf("still in /proc right after rmmod (state %s), gone after %v", state, after.Round(time.Microsecond))
		}
	}
	left, err := findByArgv0(helperName)
	if err != nil {
		return disappearance, err
	}
	if len(left) > 0 {
		return disappearance, fmt.Errorf("%s processes left after rmmod: %v", helperName, left)
	}
	if err := waitNoThreads(goneTimeout); err != nil {
		return disappearance, err
	}
	for _, path := range []string{devicePath, sysfsDir, "/sys/module/" + moduleName} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			return disappearance, fmt.Errorf("%s still exists after rmmod (stat error: %v)", path, err)
		}
	}
	return disappearance, nil
}

// reload loads and unloads the module reloadCycles more times. Each time
// the module must start a new helper that replies to an echo, and rmmod
// must leave no helper behind.
func (g *guest) reload() (string, error) {
	var loads, unloads time.Duration
	var pids []string
	for cycle := 1; cycle <= reloadCycles; cycle++ {
		load, unloadTime, pid, err := g.reloadCycle()
		if err != nil {
			return strings.Join(pids, ", "), fmt.Errorf("cycle %d: %w", cycle, err)
		}
		g.narrate("cycle %d: insmod %v, helper pid %d replied to an echo, rmmod %v, helper gone", cycle, load.Round(time.Microsecond), pid, unloadTime.Round(time.Microsecond))
		loads += load
		unloads += unloadTime
		pids = append(pids, fmt.Sprint(pid))
	}
	return fmt.Sprintf("%d cycles, helper pids %s, insmod average %v, rmmod average %v", reloadCycles, strings.Join(pids, ", "),
		(loads / reloadCycles).Round(time.Microsecond), (unloads / reloadCycles).Round(time.Microsecond)), nil
}

func (g *guest) reloadCycle() (load, unloadTime time.Duration, pid int, err error) {
	if load, err = g.load(); err != nil {
		return
	}
	if pid, err = readHelperPID(); err != nil {
		return
	}
	if _, err = checkHelper(pid); err != nil {
		return
	}
	if slices.Contains(g.pids, pid) {
		err = fmt.Errorf("helper pid %d was seen before, want a new helper", pid)
		return
	}
	g.pid = pid
	g.pids = append(g.pids, pid)
	if err = g.echoOnce(4096); err != nil {
		return
	}
	if unloadTime, err = unload(); err != nil {
		return
	}
	_, err = checkUnloaded(pid)
	g.pid = 0
	return
}

// echoOnce opens the device and sends one echo request of size bytes.
func (g *guest) echoOnce(size int) error {
	dev, err := openDevice()
	if err != nil {
		return err
	}
	defer dev.Close()
	if _, err := dev.roundTrip(proto.NewHeader(proto.TypeEcho, g.newID(), size), g.payloads.next(size)); err != nil {
		return fmt.Errorf("echo %s: %w", formatSize(size), err)
	}
	return nil
}

// Taint bits (Documentation/admin-guide/tainted-kernels.rst) that mean the
// kernel hit a problem: B bad page, D oops, W warning, L soft lockup.
const badTaints = 1<<5 | 1<<7 | 1<<9 | 1<<14

// leaks compares /proc/mounts and the tmpfs memory (Shmem) from before
// the first insmod with now, when every helper is gone, and checks the
// taint flags. umd_load_blob copies the helper into a private tmpfs, so a
// blob that is never unloaded stays in Shmem.
func (g *guest) leaks() (string, error) {
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", err
	}
	if string(mounts) != g.mountsBefore {
		return "", fmt.Errorf("/proc/mounts changed:\nbefore:\n%s\nafter:\n%s", g.mountsBefore, mounts)
	}
	shmem, err := meminfoKiB("Shmem")
	if err != nil {
		return "", err
	}
	tainted, err := readNumber("/proc/sys/kernel/tainted")
	if err != nil {
		return "", err
	}
	detail := fmt.Sprintf("/proc/mounts unchanged; Shmem %d KiB before the first insmod, %d KiB now; tainted %d",
		g.shmemBefore, shmem, tainted)
	g.narrate("%s", detail)
	// The helper blob takes up most of the module file, so one leaked
	// copy grows Shmem by more than half the module's size.
	if limit := g.moduleSize / 2 / 1024; shmem-g.shmemBefore > limit {
		return detail, fmt.Errorf("tmpfs memory (Shmem) grew by %d KiB over %d load cycles, more than %d KiB: a helper blob was not freed",
			shmem-g.shmemBefore, reloadCycles+1, limit)
	}
	if tainted&badTaints != 0 {
		return detail, fmt.Errorf("kernel taint %#x includes a bad page, oops, warning or soft lockup flag", tainted)
	}
	return detail, nil
}

func (g *guest) newID() uint64 {
	g.nextID++
	// Set high bits so that a module which truncates the ID fails.
	return 0x5a5a_0000_0000_0000 | g.nextID
}

// payloadSource generates pseudo-random payloads, so a reply that repeats
// an earlier payload or contains zeros cannot pass for an echo.
type payloadSource struct {
	rng *rand.ChaCha8
}

func newPayloadSource() *payloadSource {
	return &payloadSource{rng: rand.NewChaCha8([32]byte{'u', 'm', 'h', 'b', 'l', 'o', 'b'})}
}

func (p *payloadSource) next(size int) []byte {
	b := make([]byte, size)
	p.rng.Read(b)
	return b
}

func roundTrips(n int) string {
	if n == 1 {
		return "1 round trip"
	}
	return fmt.Sprintf("%d round trips", n)
}

// formatSize formats a byte count as 4096 B, 1 MiB or 4 MiB.
func formatSize(n int) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}
