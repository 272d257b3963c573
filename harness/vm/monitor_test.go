package vm

import (
	"errors"
	"strings"
	"testing"

	"github.com/umhblob/umhblob/harness/report"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		line string
		want string
	}{
		// Real lines from Linux 6.1 on x86-64.
		{"[    2.345678] Kernel panic - not syncing: Fatal exception", fatalPanic},
		{"[    1.104036] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100", fatalPanic},
		{"[    2.345678] Oops: 0000 [#1] PREEMPT SMP NOPTI", fatalOops},
		{"[    2.345678] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI", fatalOops},
		{"[    2.345678] invalid opcode: 0000 [#1] SMP", fatalOops},
		{"[    2.345678] BUG: kernel NULL pointer dereference, address: 0000000000000000", fatalBug},
		{"[    2.345678] BUG: unable to handle page fault for address: ffffc90000000000", fatalBug},
		{"[   22.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [umhguest:60]", fatalBug},
		{"[    2.345678] kernel BUG at mm/slub.c:123!", fatalBug},
		{"[    2.345678] UBSAN: array-index-out-of-bounds in kmod/umhblob.c:42:7", fatalBug},
		{"[    2.345678] WARNING: CPU: 1 PID: 57 at kernel/usermode_driver.c:150 umd_cleanup_helper+0x12/0x40", fatalWarning},
		{"[    2.345678] WARNING: possible recursive locking detected", fatalLockdep},
		{"[   30.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", fatalStall},
		{"[  120.000000] INFO: task umhguest:60 blocked for more than 120 seconds.", fatalHungTask},
		{"panic: runtime error: index out of range [3] with length 3", fatalGuestExit},
		{"fatal error: all goroutines are asleep - deadlock!", fatalGuestExit},
		// Ordinary lines, some of which mention the same words.
		{"[    0.000000] Command line: console=ttyS0 panic=-1 oops=panic panic_on_warn=1", ""},
		{"[    0.100000] Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on", ""},
		{"[    1.096034] reboot: Restarting system", ""},
		{"init: 2026/12/04 15:59:32 Setting console log level to 5...", ""},
		{"UMHBLOB STEP errors FAIL 1ms kernel said BUG: foo", ""},
		{"UMHBLOB INFO kmsg: 2.300000 WARNING: CPU: 1 PID: 57 at foo", ""},
		// A kernel message that the console printed into a guest line.
		{"UMHBLOB STEP echo PA[    3.200000] WARNING: CPU: 0 PID: 1 at kmod/umhblob_main.c:10 x", fatalWarning},
		{"UMHBLOB INFO pid 3[    3.200000] umhblob: helper 31 ready in 72004 us", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := classify(tt.line); got != tt.want {
			t.Errorf("classify(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestCleanLine(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"\x1bcSeaBIOS (version 1.16.2-debian-1.16.2-1)\r", "SeaBIOS (version 1.16.2-debian-1.16.2-1)"},
		{"Booting from ROM..\x1bc[    0.000000] Linux version 6.1.192", "Booting from ROM..[    0.000000] Linux version 6.1.192"},
		{"\x1b[?7lUMHBLOB RESULT PASS\r", "UMHBLOB RESULT PASS"},
		{"a\tb\x00c\x7f", "a\tbc"},
	}
	for _, tt := range tests {
		if got := cleanLine(tt.raw); got != tt.want {
			t.Errorf("cleanLine(%q) = %q, want %q", tt.raw, got, tt.want)
		}
	}
}

// passingLines returns the report lines of a guest run where every step
// passed, ending with RESULT PASS.
func passingLines() []string {
	var lines []string
	for _, name := range report.Steps {
		lines = append(lines, report.Step{Name: name, Passed: true, Detail: "ok"}.String())
	}
	return append(lines, report.Result(true))
}

// concat returns a new slice, so table entries never share an array.
func concat(parts ...[]string) []string {
	var all []string
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func feedAll(m *monitor, lines []string) {
	for _, line := range lines {
		m.feed(line)
	}
}

func TestVerdictPass(t *testing.T) {
	m := &monitor{}
	feedAll(m, append([]string{"[    0.000000] Linux version 6.1.192"}, passingLines()...))
	feedAll(m, []string{"[    1.096034] reboot: Restarting system"})

	passed, reason := m.verdict("", nil)
	if !passed {
		t.Errorf("verdict = fail (%s), want pass", reason)
	}
	if len(m.steps) != len(report.Steps) {
		t.Errorf("monitor has %d steps, want %d", len(m.steps), len(report.Steps))
	}
}

func TestVerdictFailures(t *testing.T) {
	pass := passingLines()
	withoutResult := pass[:len(pass)-1]
	failedStep := concat([]string{report.Step{Name: report.StepInsmod, Detail: "open /umhblob.ko: no such file or directory"}.String()}, pass[1:len(pass)-1])

	tests := []struct {
		name       string
		lines      []string
		stopReason string
		exitErr    error
		want       string // a substring of the reason
	}{
		{
			name:  "panic after result",
			lines: concat(pass, []string{"[    3.000000] Kernel panic - not syncing: Fatal exception"}),
			want:  "kernel panic: [    3.000000] Kernel panic",
		},
		{
			name:  "warning before result",
			lines: concat([]string{"[    2.000000] WARNING: CPU: 0 PID: 1 at kernel/module/main.c:1 x"}, pass),
			want:  "kernel warning: ",
		},
		{
			name:  "first fatal line wins",
			lines: []string{"[    2.0] BUG: kernel NULL pointer dereference, address: 0", "[    2.1] Oops: 0000 [#1] SMP", "[    2.2] Kernel panic - not syncing: Fatal exception"},
			want:  "kernel BUG: [    2.0] BUG: kernel NULL pointer dereference",
		},
		{
			name:       "hang",
			lines:      withoutResult[:2],
			stopReason: "guest hung: no serial output for 1m0s",
			want:       "guest hung",
		},
		{
			name:  "exit without result",
			lines: withoutResult,
			want:  "QEMU exited (exit status 0) without a result line",
		},
		{
			name:  "failed step",
			lines: concat(failedStep, []string{report.Result(false)}),
			want:  "RESULT FAIL with failed steps: insmod: open /umhblob.ko: no such file or directory",
		},
		{
			name:  "pass with a failed step",
			lines: concat(failedStep, []string{report.Result(true)}),
			want:  "RESULT PASS with failed steps: insmod",
		},
		{
			name:  "fail without a failed step",
			lines: concat(withoutResult, []string{report.Result(false)}),
			want:  "RESULT FAIL without a failed step",
		},
		{
			name:  "missing steps",
			lines: []string{report.Step{Name: report.StepInsmod, Passed: true, Detail: "ok"}.String(), report.Result(true)},
			want:  "never ran steps helper, echo",
		},
		{
			name:  "malformed line",
			lines: concat([]string{"UMHBLOB STEP insmod MAYBE 1ms x"}, pass),
			want:  "malformed report lines",
		},
		{
			name:  "second result",
			lines: concat(pass, []string{report.Result(true)}),
			want:  "second result line",
		},
		{
			name:    "QEMU error after pass",
			lines:   pass,
			exitErr: errors.New("exit status 1"),
			want:    "QEMU exited (exit status 1) after RESULT PASS",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &monitor{}
			feedAll(m, tt.lines)
			passed, reason := m.verdict(tt.stopReason, tt.exitErr)
			if passed {
				t.Fatalf("verdict = pass, want a failure containing %q", tt.want)
			}
			if !strings.Contains(reason, tt.want) {
				t.Errorf("verdict reason = %q, want it to contain %q", reason, tt.want)
			}
		})
	}
}

func TestFeedReportsFirstFatalAndResult(t *testing.T) {
	m := &monitor{}
	if fatal, result := m.feed("[    2.0] Oops: 0000 [#1] SMP"); !fatal || result {
		t.Errorf("feed(first oops) = %v, %v, want true, false", fatal, result)
	}
	if fatal, _ := m.feed("[    2.1] Kernel panic - not syncing: Fatal exception"); fatal {
		t.Errorf("feed(second fatal line) = true, want false")
	}
	if _, result := m.feed(report.Result(true)); !result {
		t.Errorf("feed(result line) reported no result")
	}
}

func TestVerdictDemoRunNeedsOnlyDemoSteps(t *testing.T) {
	var lines []string
	for _, name := range report.DemoSteps {
		lines = append(lines, report.Step{Name: name, Passed: true, Detail: "ok"}.String())
	}
	lines = append(lines, report.Result(true))

	demo := &monitor{demo: true}
	feedAll(demo, lines)
	if passed, reason := demo.verdict("", nil); !passed {
		t.Errorf("demo run verdict = fail (%s), want pass", reason)
	}
	test := &monitor{}
	feedAll(test, lines)
	passed, reason := test.verdict("", nil)
	if want := "never ran steps " + report.FaultSteps[0]; passed || !strings.Contains(reason, want) {
		t.Errorf("test run with only the demo steps: verdict %v (%s), want a failure containing %q", passed, reason, want)
	}
}
