package vm

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/umhblob/umhblob/harness/report"
)

var (
	// kernelTimestamp is the printk time prefix, "[    1.234567] ".
	kernelTimestamp = regexp.MustCompile(`^\[\s*[0-9]+\.[0-9]+\] ?`)

	// splicedTimestamp finds a kernel message that the console printed
	// in the middle of a line the guest was writing.
	splicedTimestamp = regexp.MustCompile(`\[\s*[0-9]+\.[0-9]{6}\] `)

	// dieHeader matches the first line of an x86 oops, for example
	// "general protection fault, ...: 0000 [#1] PREEMPT SMP" or
	// "invalid opcode: 0000 [#1] SMP" (arch/x86/kernel/dumpstack.c).
	dieHeader = regexp.MustCompile(`: [0-9a-f]{4} \[#[0-9]+\]`)

	// escapeSequence is an ECMA-48 control sequence (ESC [ ... final
	// byte) or a two-byte escape such as ESC c, which SeaBIOS sends.
	escapeSequence = regexp.MustCompile("\x1b(\\[[0-?]*[ -/]*[@-~]|[@-~])")
)

// Fatal kinds, the first words of the failure message.
const (
	fatalPanic     = "kernel panic"
	fatalOops      = "kernel oops"
	fatalBug       = "kernel BUG"
	fatalWarning   = "kernel warning"
	fatalStall     = "kernel stall"
	fatalGuestExit = "guest program crashed"
)

// classify returns the kind of fatal event that line reports, or "" for
// an ordinary line. In a report line only a kernel message spliced into
// it counts, so a step detail that quotes kernel text cannot fail the run.
// The guest prints kernel log records without the bracketed timestamp for
// the same reason.
func classify(line string) string {
	if strings.HasPrefix(line, report.Prefix) {
		loc := splicedTimestamp.FindStringIndex(line)
		if loc == nil {
			return ""
		}
		line = line[loc[0]:]
	}
	// A Go runtime crash in the guest program has no timestamp.
	if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
		return fatalGuestExit
	}
	msg := kernelTimestamp.ReplaceAllString(line, "")
	if kind := classifyDebug(msg); kind != "" {
		return kind
	}
	switch {
	case strings.HasPrefix(msg, "Kernel panic - not syncing"):
		return fatalPanic
	case strings.HasPrefix(msg, "Oops: ") || dieHeader.MatchString(msg):
		return fatalOops
	case strings.Contains(msg, "BUG: ") || strings.HasPrefix(msg, "kernel BUG at ") || strings.HasPrefix(msg, "UBSAN: "):
		return fatalBug
	case strings.HasPrefix(msg, "WARNING: "):
		return fatalWarning
	case strings.Contains(msg, "detected stalls on CPUs") || strings.Contains(msg, "blocked for more than"):
		return fatalStall
	}
	return ""
}

// cleanLine removes the line ending, escape sequences and other control
// characters from a raw serial line.
func cleanLine(raw string) string {
	line := escapeSequence.ReplaceAllString(raw, "")
	return strings.Map(func(r rune) rune {
		if r == '\t' || r >= ' ' && r != 0x7f {
			return r
		}
		return -1
	}, line)
}

// monitor follows the serial console of one run and collects what the
// verdict needs.
type monitor struct {
	demo      bool // a demo run, which reports only report.DemoSteps
	steps     []report.Step
	result    *bool  // nil until the RESULT line
	fatal     string // "kind: line" of the first fatal line
	malformed []string
	last      string // last non-empty line
}

// feed processes one cleaned serial line. It returns whether the line is
// the run's first fatal line and whether it is the RESULT line.
func (m *monitor) feed(line string) (firstFatal, result bool) {
	if strings.TrimSpace(line) != "" {
		m.last = line
	}
	if kind := classify(line); kind != "" {
		if m.fatal != "" {
			return false, false
		}
		m.fatal = kind + ": " + line
		return true, false
	}
	parsed, err := report.Parse(line)
	if err != nil {
		m.malformed = append(m.malformed, err.Error())
		return false, false
	}
	switch parsed.Kind {
	case report.KindStep:
		m.steps = append(m.steps, parsed.Step)
	case report.KindResult:
		if m.result == nil {
			passed := parsed.Passed
			m.result = &passed
			return false, true
		}
		m.malformed = append(m.malformed, fmt.Sprintf("second result line %q", line))
	}
	return false, false
}

// verdict decides whether the run passed. stopReason is the reason the
// harness stopped QEMU, or "" when QEMU exited by itself, and exitErr is
// QEMU's exit error. A run passes only with RESULT PASS, every step present and
// passed, no fatal kernel line, and QEMU exiting by itself with status 0.
func (m *monitor) verdict(stopReason string, exitErr error) (bool, string) {
	switch {
	case m.fatal != "":
		return false, m.fatal
	case stopReason != "":
		return false, stopReason
	case len(m.malformed) > 0:
		return false, "guest printed malformed report lines: " + strings.Join(m.malformed, "; ")
	case m.result == nil:
		return false, fmt.Sprintf("QEMU exited (%s) without a result line; last line: %q", exitStatus(exitErr), m.last)
	}
	if failed := m.failedSteps(); len(failed) > 0 {
		return false, fmt.Sprintf("guest reported RESULT %s with failed steps: %s", verdictWord(*m.result), strings.Join(failed, "; "))
	}
	if !*m.result {
		return false, "guest reported RESULT FAIL without a failed step"
	}
	if missing := m.missingSteps(); len(missing) > 0 {
		return false, fmt.Sprintf("guest reported RESULT PASS but never ran steps %s", strings.Join(missing, ", "))
	}
	if exitErr != nil {
		return false, fmt.Sprintf("QEMU exited (%s) after RESULT PASS", exitStatus(exitErr))
	}
	return true, "all steps passed"
}

func (m *monitor) failedSteps() []string {
	var failed []string
	for _, s := range m.steps {
		if !s.Passed {
			failed = append(failed, s.Name+": "+s.Detail)
		}
	}
	return failed
}

func (m *monitor) missingSteps() []string {
	var missing []string
	for _, name := range report.StepsFor(m.demo) {
		if !slices.ContainsFunc(m.steps, func(s report.Step) bool { return s.Name == name }) {
			missing = append(missing, name)
		}
	}
	return missing
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func verdictWord(passed bool) string {
	if passed {
		return "PASS"
	}
	return "FAIL"
}
