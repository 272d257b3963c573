package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umhblob/umhblob/harness/report"
)

// heartbeat is how often a running step prints that it is still running.
// The host treats a silent console as a hung guest, so it must be well
// below the host's silence timeout (60 s by default).
const heartbeat = 10 * time.Second

// guest is the state that the steps share.
type guest struct {
	out        io.Writer
	modulePath string
	demo       bool

	pid      int   // pid of the current helper, 0 when none is known
	pids     []int // every helper pid seen so far
	nextID   uint64
	payloads *payloadSource

	moduleSize   int64  // bytes in the module file
	mountsBefore string // /proc/mounts before the first insmod
	shmemBefore  int64  // Shmem in /proc/meminfo before the first insmod, KiB
	logStart     int    // kernel log records that predate the guest

	// slowdown is how many times longer the first insmod took than
	// referenceLoad, at least 1. scale multiplies time limits by it.
	slowdown float64

	sigpipes     atomic.Int64  // SIGPIPE signals received in a test run
	faultResults []faultResult // figures of the passed fault-* steps

	kmemleakMissing string // reason kmemleak is not available, or ""
	kmemleakErr     error  // from clearing kmemleak before the first insmod
}

// step is one guest step. A step whose run returns an error fails, and when
// it is also critical, the steps after it are reported as skipped.
type step struct {
	name     string
	timeout  time.Duration
	critical bool
	run      func(g *guest) (detail string, err error)
}

// run runs every step, prints the report lines and returns true when all
// steps passed.
func (g *guest) run() bool {
	mode := "test"
	if g.demo {
		mode = "demo"
	}
	g.info("umhguest started: kernel %s, mode %s, module %s", kernelRelease(), mode, g.modulePath)
	if records, err := kernelLog(); err == nil {
		g.logStart = len(records)
	}
	if !g.demo {
		g.countSIGPIPE()
		g.prepareKmemleak()
	}
	passed := g.runSteps(steps(g.demo))
	if !passed {
		g.dumpKernelLog(60)
	} else if g.demo {
		g.dumpModuleLog()
	}
	g.println(report.Result(passed))
	return passed
}

// referenceLoad is about the time of the first insmod, helper start and
// handshake included, of the test kernel in a 2-vCPU TCG guest on a
// 2-core x86-64 host: 100 to 230 ms were measured. A debug kernel with
// KASAN and lockdep took 0.9 s.
const referenceLoad = 250 * time.Millisecond

// setSlowdown sets g.slowdown from the time of the first insmod.
func (g *guest) setSlowdown(load time.Duration) {
	g.slowdown = max(1, float64(load)/float64(referenceLoad))
}

// scale returns limit multiplied by g.slowdown, so that the time limits
// of the steps grow on a slower kernel or machine instead of failing it.
func (g *guest) scale(limit time.Duration) time.Duration {
	return time.Duration(float64(limit) * max(1, g.slowdown))
}

// countSIGPIPE counts the SIGPIPE signals the guest receives from now on.
// The module writes to the helper's stdin in a kernel thread, so a write
// to a dead helper must never send SIGPIPE to the caller.
func (g *guest) countSIGPIPE() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGPIPE)
	go func() {
		for range sigs {
			g.sigpipes.Add(1)
		}
	}()
}

func (g *guest) runSteps(steps []step) bool {
	passed := true
	skipReason := ""
	for _, s := range steps {
		if skipReason != "" {
			g.println(report.Step{Name: s.name, Detail: "skipped: " + skipReason}.String())
			continue
		}
		if g.demo {
			g.println("")
			g.info("=== %s", s.name)
		}
		result, timedOut := g.runStep(s)
		g.println(result.String())
		if result.Passed {
			continue
		}
		passed = false
		switch {
		case timedOut:
			// The step's goroutine may still be blocked in the
			// module, so nothing after it can be trusted.
			skipReason = fmt.Sprintf("step %s timed out", s.name)
		case s.critical:
			skipReason = fmt.Sprintf("step %s failed", s.name)
		}
	}
	return passed
}

// runStep runs s in a goroutine and gives up after s.timeout, so that a
// request blocked in the module cannot hang the guest.
func (g *guest) runStep(s step) (report.Step, bool) {
	type outcome struct {
		detail string
		err    error
	}
	done := make(chan outcome, 1)
	start := time.Now()
	go func() {
		detail, err := s.run(g)
		done <- outcome{detail, err}
	}()

	timeout := g.scale(s.timeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case o := <-done:
			r := report.Step{Name: s.name, Passed: o.err == nil, Duration: time.Since(start), Detail: o.detail}
			if o.err != nil {
				r.Detail = o.err.Error()
				if o.detail != "" {
					r.Detail += " (" + o.detail + ")"
				}
			}
			return r, false
		case <-tick.C:
			g.println(report.Info("step %s still running after %v", s.name, time.Since(start).Round(time.Second)))
		case <-deadline.C:
			return report.Step{
				Name:     s.name,
				Duration: time.Since(start),
				Detail:   fmt.Sprintf("timed out after %v; a system call is probably blocked in the module", timeout),
			}, true
		}
	}
}

// info prints an INFO report line.
func (g *guest) info(format string, args ...any) {
	g.println(report.Info(format, args...))
}

// narrate prints an INFO line in demo mode only, as part of the transcript.
func (g *guest) narrate(format string, args ...any) {
	if g.demo {
		g.info("    "+format, args...)
	}
}

// println writes s and a newline with a single write(2). On a terminal it
// then waits until the line has been sent, because a kernel message that
// the next system call prints, such as the taint warning of finit_module,
// would otherwise land in the middle of the line.
func (g *guest) println(s string) {
	io.WriteString(g.out, s+"\n")
	drain(g.out)
}

// dumpKernelLog prints, as INFO lines, the kernel log records written
// since the guest started, at most the last n. The console shows only
// warnings and worse, so this is where the module's other messages appear.
func (g *guest) dumpKernelLog(n int) {
	records, err := kernelLog()
	if err != nil {
		g.info("kernel log unavailable: %v", err)
		return
	}
	// NOTE: the start index is wrong once the ring buffer wraps. The
	// test kernel's 128 KiB buffer (CONFIG_LOG_BUF_SHIFT=17) has room
	// for far more than one guest run writes.
	if g.logStart <= len(records) {
		records = records[g.logStart:]
	}
	if len(records) > n {
		records = records[len(records)-n:]
	}
	g.info("%d kernel log records since umhguest started:", len(records))
	for _, r := range records {
		g.info("kmsg: %s", r)
	}
}

// dumpModuleLog prints the kernel log records that mention the module.
func (g *guest) dumpModuleLog() {
	records, err := kernelLog()
	if err != nil {
		g.info("kernel log unavailable: %v", err)
		return
	}
	g.println("")
	g.info("=== kernel log records that mention %s", moduleName)
	for _, r := range records {
		if strings.Contains(r, moduleName) {
			g.info("kmsg: %s", r)
		}
	}
}
