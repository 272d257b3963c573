package vm

import "strings"

// Fatal kinds that only a debug kernel (kernel-config/debug.config)
// reports. Lockdep, the hung task detector and might_sleep() print their
// reports without calling WARN() or panic(), so panic_on_warn=1 does not
// stop the machine and only the console shows them. KASAN does panic with
// panic_on_warn=1 (Linux 5.10 to 6.12), after its report.
const (
	fatalKASAN       = "KASAN report"
	fatalLockdep     = "lockdep report"
	fatalAtomicSleep = "sleep in atomic context"
	fatalHungTask    = "hung task"
	fatalKmemleak    = "kmemleak report"
)

// lockdepTitles are the ends of the "WARNING: ..." title lines that
// kernel/locking/lockdep.c prints (Linux 5.10 to 6.12), one per kind of
// report, and of the RCU-lockdep report.
var lockdepTitles = []string{
	"possible circular locking dependency detected",
	"lock order detected", // "<irq>-safe -> <irq>-unsafe lock order detected"
	"possible recursive locking detected",
	"inconsistent lock state",
	"possible irq lock inversion dependency detected",
	"Nested lock was not taken",
	"bad unlock balance detected!",
	"bad contention detected!",
	"held lock freed!",
	"still has locks held!",
	"lock held when returning to user space!",
	"chain_key collision",
	"suspicious RCU usage",
}

// classifyDebug returns the kind of debug kernel report that the kernel
// message msg (without its timestamp) starts, or "".
func classifyDebug(msg string) string {
	switch {
	case strings.HasPrefix(msg, "BUG: KASAN: "):
		return fatalKASAN
	case strings.HasPrefix(msg, "WARNING: ") && containsAny(msg, lockdepTitles):
		return fatalLockdep
	case strings.HasPrefix(msg, "INFO: trying to register non-static key"):
		return fatalLockdep
	// "BUG: MAX_LOCKDEP_ENTRIES too low!" and its siblings turn lockdep
	// off for the rest of the run.
	case strings.HasPrefix(msg, "BUG: MAX_") && strings.HasSuffix(msg, "too low!"):
		return fatalLockdep
	case strings.HasPrefix(msg, "BUG: sleeping function called from invalid context"),
		strings.HasPrefix(msg, "BUG: scheduling while atomic"):
		return fatalAtomicSleep
	case strings.HasPrefix(msg, "INFO: task ") && strings.Contains(msg, " blocked for more than "):
		return fatalHungTask
	// The guest prints /sys/kernel/debug/kmemleak after a scan, where
	// each leak starts with this line (mm/kmemleak.c).
	case strings.HasPrefix(msg, "unreferenced object 0x"):
		return fatalKmemleak
	}
	return ""
}

func containsAny(s string, substrings []string) bool {
	for _, sub := range substrings {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
