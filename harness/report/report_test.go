package report

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStepRoundTrip(t *testing.T) {
	steps := []Step{
		{Name: StepInsmod, Passed: true, Duration: 85200 * time.Microsecond, Detail: "loaded /umhblob.ko (123 bytes)"},
		{Name: StepEcho, Passed: false, Duration: 0, Detail: "echo 1 MiB: reply ID 0x1, want 0x2"},
		{Name: StepRmmod, Passed: true, Duration: time.Second, Detail: ""},
	}
	for _, want := range steps {
		line := want.String()
		got, err := Parse(line)
		if err != nil {
			t.Fatalf("Parse(%q) error: %v", line, err)
		}
		if got.Kind != KindStep {
			t.Errorf("Parse(%q).Kind = %v, want KindStep", line, got.Kind)
		}
		if want.Detail == "" {
			want.Detail = "-"
		}
		if got.Step != want {
			t.Errorf("Parse(%q).Step = %+v, want %+v", line, got.Step, want)
		}
		if got.Passed != want.Passed {
			t.Errorf("Parse(%q).Passed = %v, want %v", line, got.Passed, want.Passed)
		}
	}
}

func TestStepDetailOneLine(t *testing.T) {
	s := Step{Name: StepLeaks, Detail: "/proc/mounts changed:\nbefore:\nrootfs / rootfs rw 0 0\n"}
	line := s.String()
	want := "UMHBLOB STEP leaks FAIL 0s /proc/mounts changed: before: rootfs / rootfs rw 0 0"
	if line != want {
		t.Errorf("Step.String() = %q, want %q", line, want)
	}
}

func TestParseLines(t *testing.T) {
	tests := []struct {
		line   string
		kind   Kind
		passed bool
		text   string
	}{
		{line: "UMHBLOB RESULT PASS", kind: KindResult, passed: true},
		{line: "UMHBLOB RESULT FAIL", kind: KindResult, passed: false},
		{line: "UMHBLOB INFO umhguest started: kernel 6.1.192", kind: KindInfo, text: "umhguest started: kernel 6.1.192"},
		{line: "[    1.096034] reboot: Restarting system", kind: KindOther},
		{line: "", kind: KindOther},
		{line: "umhblob: helper started", kind: KindOther},
		{line: " UMHBLOB RESULT PASS", kind: KindOther},
	}
	for _, tt := range tests {
		got, err := Parse(tt.line)
		if err != nil {
			t.Errorf("Parse(%q) error: %v", tt.line, err)
			continue
		}
		if got.Kind != tt.kind || got.Passed != tt.passed || got.Text != tt.text {
			t.Errorf("Parse(%q) = %+v, want kind %v, passed %v, text %q", tt.line, got, tt.kind, tt.passed, tt.text)
		}
	}
}

func TestParseMalformed(t *testing.T) {
	lines := []string{
		"UMHBLOB RESULT",
		"UMHBLOB RESULT PASSED",
		"UMHBLOB STEP insmod",
		"UMHBLOB STEP insmod OK 1ms loaded",
		"UMHBLOB STEP insmod PASS soon loaded",
		"UMHBLOB STEP insmod PASS 1ms",
		"UMHBLOB DONE",
	}
	for _, line := range lines {
		if _, err := Parse(line); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) error = %v, want ErrMalformed", line, err)
		}
	}
}

func TestResultAndInfo(t *testing.T) {
	if got, want := Result(true), "UMHBLOB RESULT PASS"; got != want {
		t.Errorf("Result(true) = %q, want %q", got, want)
	}
	if got, want := Result(false), "UMHBLOB RESULT FAIL"; got != want {
		t.Errorf("Result(false) = %q, want %q", got, want)
	}
	if got, want := Info("pid %d\nppid %d", 57, 2), "UMHBLOB INFO pid 57 ppid 2"; got != want {
		t.Errorf("Info() = %q, want %q", got, want)
	}
}

func TestStepLists(t *testing.T) {
	if got, want := len(Steps), len(DemoSteps)+len(FaultSteps); got != want {
		t.Errorf("len(Steps) = %d, want %d", got, want)
	}
	seen := make(map[string]bool)
	for i, name := range Steps {
		if name == "" || strings.ContainsAny(name, " \t") {
			t.Errorf("step name %q is empty or has a space, which the report line cannot carry", name)
		}
		if seen[name] {
			t.Errorf("step %s is listed twice", name)
		}
		seen[name] = true
		want := FaultSteps[max(0, i-len(DemoSteps))]
		if i < len(DemoSteps) {
			want = DemoSteps[i]
		}
		if name != want {
			t.Errorf("Steps[%d] = %s, want %s: Steps is DemoSteps then FaultSteps", i, name, want)
		}
	}
}

func TestStepsFor(t *testing.T) {
	if got := StepsFor(true); !slices.Equal(got, DemoSteps) {
		t.Errorf("StepsFor(true) = %v, want DemoSteps", got)
	}
	if got := StepsFor(false); !slices.Equal(got, Steps) {
		t.Errorf("StepsFor(false) = %v, want Steps", got)
	}
}
