package main

import (
	"fmt"
	"time"
)

// pidPoll is how often a pidWatch reads helper_pid.
const pidPoll = time.Millisecond

// pidWatch polls helper_pid in sysfs. It records when helper_pid first
// stops showing the old helper, because the module has declared it dead,
// and when it first shows a new one, which has completed its handshake.
type pidWatch struct {
	old  int
	stop chan struct{}
	done chan struct{}

	// The polling goroutine sets these, and they are read only after
	// done is closed.
	detected  time.Time
	restarted time.Time
	newPID    int
	err       error
}

func watchHelperPID(old int) *pidWatch {
	w := &pidWatch{old: old, stop: make(chan struct{}), done: make(chan struct{})}
	go w.poll()
	return w
}

func (w *pidWatch) poll() {
	defer close(w.done)
	tick := time.NewTicker(pidPoll)
	defer tick.Stop()
	for {
		pid, err := readHelperPID()
		now := time.Now()
		if err != nil {
			w.err = fmt.Errorf("read helper_pid: %w", err)
			return
		}
		if pid != w.old && w.detected.IsZero() {
			w.detected = now
		}
		if pid != w.old && pid != 0 {
			w.restarted, w.newPID = now, pid
			return
		}
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
	}
}

// wait waits until deadline for a new helper and stops the polling.
func (w *pidWatch) wait(deadline time.Time) {
	select {
	case <-w.done:
	case <-time.After(time.Until(deadline)):
		close(w.stop)
		<-w.done
	}
}

// check returns an error unless the watch saw a new helper. start is the
// time of the fault, and waited is how long the watch waited after the
// fault was injected.
func (w *pidWatch) check(start time.Time, waited time.Duration) error {
	switch {
	case w.err != nil:
		return w.err
	case w.detected.IsZero():
		return fmt.Errorf("helper_pid still shows helper %d %v after the fault: the module did not notice it", w.old, waited.Round(time.Millisecond))
	case w.newPID == 0:
		return fmt.Errorf("helper_pid is still 0 %v after the fault, which the module noticed after %v: no new helper started",
			waited.Round(time.Millisecond), w.detected.Sub(start).Round(time.Millisecond))
	}
	return nil
}
