// Package report defines the lines that the guest program prints on the
// serial console and that the host parses to decide whether a VM run
// passed. Every report line starts with "UMHBLOB " and is one of:
//
//	UMHBLOB STEP <name> PASS|FAIL <duration> <detail>
//	UMHBLOB INFO <text>
//	UMHBLOB RESULT PASS|FAIL
//
// <name> has no spaces, <duration> is a Go duration such as 85.2ms, and
// <detail> runs to the end of the line. Only "UMHBLOB RESULT PASS" means
// that the guest passed.
package report

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Prefix starts every report line.
const Prefix = "UMHBLOB "

// Names of the basic guest steps, in the order the guest runs them.
const (
	StepInsmod = "insmod" // load the module, time the helper handshake
	StepHelper = "helper" // the helper process and its parent
	StepEcho   = "echo"   // ping and echo round trips through the device
	StepErrors = "errors" // malformed requests get the documented errnos
	StepStatus = "status" // the counters in sysfs
	StepRmmod  = "rmmod"  // unload, and the helper is gone
	StepReload = "reload" // more load and unload cycles
	StepLeaks  = "leaks"  // mounts and open files after the cycles
)

// Names of the fault steps, which follow the basic steps outside demo
// mode. Each fault-* step kills or breaks the helper from outside while
// several callers send requests, and then unloads the module right after
// the same fault.
const (
	StepSequence         = "sequence"          // 1000 requests in a row, one helper
	StepRmmodBusy        = "rmmod-busy"        // rmmod fails at once while the device is open
	StepInterruptEINTR   = "interrupt-eintr"   // a signal ends a blocked request with EINTR
	StepInterruptRestart = "interrupt-restart" // an SA_RESTART signal restarts a blocked request
	StepSIGPIPE          = "sigpipe"           // a write to a dead helper sends no SIGPIPE
	StepFaultSIGKILL     = "fault-sigkill"     // kill -KILL the helper
	StepFaultSIGSEGV     = "fault-sigsegv"     // kill -SEGV the helper
	StepFaultSIGTERM     = "fault-sigterm"     // kill -TERM the helper
	StepFaultSIGSTOP     = "fault-sigstop"     // kill -STOP: the request timeout replaces it
	StepFaultOOM         = "fault-oom"         // the OOM killer picks the helper
	StepFaultStdin       = "fault-stdin"       // garbage written into the helper's stdin
	StepFaultStdout      = "fault-stdout"      // garbage written into the helper's stdout
	StepFaults           = "faults"            // totals and worst times of the fault-* steps
	StepCycles           = "cycles"            // 200 load and unload cycles, then leak figures
	StepKmemleak         = "kmemleak"          // kmemleak scan, on kernels that have it
)

// DemoSteps lists the steps of a demo run, in run order.
var DemoSteps = []string{StepInsmod, StepHelper, StepEcho, StepErrors, StepStatus, StepRmmod, StepReload, StepLeaks}

// FaultSteps lists the steps that only a test run adds, in run order.
var FaultSteps = []string{
	StepSequence, StepRmmodBusy, StepInterruptEINTR, StepInterruptRestart, StepSIGPIPE,
	StepFaultSIGKILL, StepFaultSIGSEGV, StepFaultSIGTERM, StepFaultSIGSTOP, StepFaultOOM, StepFaultStdin, StepFaultStdout,
	StepFaults, StepCycles, StepKmemleak,
}

// Steps lists every step of a test run in run order: DemoSteps, then
// FaultSteps.
var Steps = append(slices.Clip(DemoSteps), FaultSteps...)

// StepsFor returns the steps that a run must report: DemoSteps in demo
// mode, Steps otherwise.
func StepsFor(demo bool) []string {
	if demo {
		return DemoSteps
	}
	return Steps
}

// Kind is the kind of a parsed serial line.
type Kind int

// Line kinds.
const (
	KindOther  Kind = iota // not a report line
	KindStep               // UMHBLOB STEP
	KindInfo               // UMHBLOB INFO
	KindResult             // UMHBLOB RESULT
)

// Step is the outcome of one guest step.
type Step struct {
	Name     string
	Passed   bool
	Duration time.Duration
	Detail   string
}

// String formats s as a report line without the trailing newline.
func (s Step) String() string {
	detail := oneLine(s.Detail)
	if detail == "" {
		detail = "-"
	}
	return fmt.Sprintf("%sSTEP %s %s %s %s", Prefix, s.Name, verdict(s.Passed), s.Duration.Round(time.Microsecond), detail)
}

// Info formats a free-text report line.
func Info(format string, args ...any) string {
	return Prefix + "INFO " + oneLine(fmt.Sprintf(format, args...))
}

// Result formats the final report line.
func Result(passed bool) string {
	return Prefix + "RESULT " + verdict(passed)
}

// Line is a parsed serial line.
type Line struct {
	Kind   Kind
	Step   Step   // for KindStep
	Passed bool   // for KindStep and KindResult
	Text   string // for KindInfo
}

// ErrMalformed is returned for a line that starts with Prefix but does not
// follow the format in the package documentation.
var ErrMalformed = errors.New("malformed report line")

// Parse parses one serial line with its line ending removed. Lines that do
// not start with Prefix are KindOther.
func Parse(line string) (Line, error) {
	rest, ok := strings.CutPrefix(line, Prefix)
	if !ok {
		return Line{Kind: KindOther}, nil
	}
	kind, rest, _ := strings.Cut(rest, " ")
	switch kind {
	case "INFO":
		return Line{Kind: KindInfo, Text: rest}, nil
	case "RESULT":
		passed, err := parseVerdict(rest)
		if err != nil {
			return Line{}, fmt.Errorf("%w %q: %w", ErrMalformed, line, err)
		}
		return Line{Kind: KindResult, Passed: passed}, nil
	case "STEP":
		step, err := parseStep(rest)
		if err != nil {
			return Line{}, fmt.Errorf("%w %q: %w", ErrMalformed, line, err)
		}
		return Line{Kind: KindStep, Step: step, Passed: step.Passed}, nil
	}
	return Line{}, fmt.Errorf("%w %q: unknown kind %q, want STEP, INFO or RESULT", ErrMalformed, line, kind)
}

func parseStep(s string) (Step, error) {
	fields := strings.SplitN(s, " ", 4)
	if len(fields) < 4 {
		return Step{}, errors.New("want STEP <name> PASS|FAIL <duration> <detail>")
	}
	passed, err := parseVerdict(fields[1])
	if err != nil {
		return Step{}, err
	}
	d, err := time.ParseDuration(fields[2])
	if err != nil {
		return Step{}, err
	}
	return Step{Name: fields[0], Passed: passed, Duration: d, Detail: fields[3]}, nil
}

func parseVerdict(s string) (bool, error) {
	switch s {
	case "PASS":
		return true, nil
	case "FAIL":
		return false, nil
	}
	return false, fmt.Errorf("verdict %q, want PASS or FAIL", s)
}

func verdict(passed bool) string {
	if passed {
		return "PASS"
	}
	return "FAIL"
}

// oneLine replaces line breaks, so that a detail cannot start a new
// serial line that the host would parse on its own.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
