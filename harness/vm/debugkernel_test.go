package vm

import "testing"

func TestClassifyDebugKernel(t *testing.T) {
	tests := []struct {
		line string
		want string
	}{
		// Title lines as Linux 6.1 prints them (mm/kasan/report.c,
		// kernel/locking/lockdep.c, kernel/sched/core.c,
		// kernel/hung_task.c, mm/kmemleak.c).
		{"[   12.345678] BUG: KASAN: slab-use-after-free in umhb_read+0x1a/0x40 [umhblob]", fatalKASAN},
		{"[   12.345678] BUG: KASAN: invalid-access", fatalKASAN},
		{"[   12.345678] WARNING: possible circular locking dependency detected", fatalLockdep},
		{"[   12.345678] WARNING: inconsistent lock state", fatalLockdep},
		{"[   12.345678] WARNING: possible recursive locking detected", fatalLockdep},
		{"[   12.345678] WARNING: possible irq lock inversion dependency detected", fatalLockdep},
		{"[   12.345678] WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", fatalLockdep},
		{"[   12.345678] WARNING: bad unlock balance detected!", fatalLockdep},
		{"[   12.345678] WARNING: umhguest/57 still has locks held!", fatalLockdep},
		{"[   12.345678] WARNING: lock held when returning to user space!", fatalLockdep},
		{"[   12.345678] WARNING: suspicious RCU usage", fatalLockdep},
		{"[   12.345678] INFO: trying to register non-static key.", fatalLockdep},
		{"[   12.345678] BUG: MAX_LOCKDEP_ENTRIES too low!", fatalLockdep},
		{"[   12.345678] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580", fatalAtomicSleep},
		{"[   12.345678] BUG: scheduling while atomic: umhguest/57/0x00000002", fatalAtomicSleep},
		{"[  150.000000] INFO: task rmmod:88 blocked for more than 30 seconds.", fatalHungTask},
		{"unreferenced object 0xffff888003a1b200 (size 64):", fatalKmemleak},
		{"[   12.345678] unreferenced object 0xffff888003a1b200 (size 64):", fatalKmemleak},
		// A WARN() splat stays a kernel warning.
		{"[   12.345678] WARNING: CPU: 1 PID: 57 at kmod/umhblob_helper.c:120 umhb_stop+0x3e/0x90 [umhblob]", fatalWarning},
		// Lines around the reports that are not reports themselves.
		{"[   12.345678] INFO: lockdep is turned off.", ""},
		{"[    0.000000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar", ""},
		{"[    0.100000] kmemleak: Kernel memory leak detector initialized (mem pool available: 15672)", ""},
		{"[    0.100000] kmemleak: Automatic memory scanning thread started", ""},
		{"[    0.200000] KernelAddressSanitizer initialized (generic)", ""},
		{"UMHBLOB STEP kmemleak FAIL 2.1s unreferenced object 0xffff888003a1b200 (size 64)", ""},
	}
	for _, tt := range tests {
		if got := classify(tt.line); got != tt.want {
			t.Errorf("classify(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}
