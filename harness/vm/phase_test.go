package vm

import (
	"strings"
	"testing"
	"time"
)

func TestPhaseTimerSummary(t *testing.T) {
	var p phaseTimer
	p.start("initramfs")
	time.Sleep(20 * time.Millisecond)
	p.start("accel")
	p.stop()
	p.add("boot", 1500*time.Millisecond)
	p.add("guest", 62*time.Second)

	got := p.summary()
	if want := "(initramfs 0s, accel 0s, boot 1.5s, guest 1m2s)"; !strings.HasSuffix(got, want) {
		t.Errorf("summary = %q, want it to end with %q", got, want)
	}
}
