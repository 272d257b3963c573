package main

import (
	"fmt"
	"io"
	"strings"
	"time"

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
	passed := g.runSteps(steps())
	if !passed {
		g.dumpKernelLog(60)
	} else if g.demo {
		g.dumpModuleLog()
	}
	g.println(report.Result(passed))
	return passed
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

	deadline := time.NewTimer(s.timeout)
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
				Detail:   fmt.Sprintf("timed out after %v; a system call is probably blocked in the module", s.timeout),
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
