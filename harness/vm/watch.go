package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// lineWriter receives QEMU's output, copies it unchanged to log, and sends
// each complete line, cleaned, to lines. It is safe for concurrent use
// because QEMU's stdout and stderr are copied by separate goroutines.
type lineWriter struct {
	mu      sync.Mutex
	log     io.Writer
	partial []byte
	lines   chan<- string
	once    sync.Once
}

func newLineWriter(log io.Writer, lines chan<- string) *lineWriter {
	return &lineWriter{log: log, lines: lines}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.log != nil {
		w.log.Write(p)
	}
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.lines <- cleanLine(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

// Close sends the last unterminated line, if any, and closes the channel.
// vmtest calls it once QEMU has exited and its output is drained, and may
// call it more than once.
func (w *lineWriter) Close() error {
	w.once.Do(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.partial) > 0 {
			w.lines <- cleanLine(string(w.partial))
		}
		close(w.lines)
	})
	return nil
}

// timing is the set of watchdog limits of one run.
type timing struct {
	Total       time.Duration // the whole run, boot included
	Silence     time.Duration // maximum time without a serial line
	Grace       time.Duration // time to collect a trace after a fatal line
	AfterResult time.Duration // time for the guest to restart after RESULT
	KillWait    time.Duration // time for QEMU to exit after it was killed
}

// watch feeds every serial line to m and onLine until lines is closed.
// It calls kill t.Grace after a fatal kernel line, after t.Silence without
// output, after t.Total, t.AfterResult after the result line if QEMU is
// still running, or when ctx is done. It returns the reason it called
// kill, or "" when QEMU exited by itself or was killed after a fatal line.
func watch(ctx context.Context, lines <-chan string, m *monitor, onLine func(string), kill func(), t timing) string {
	silence := time.NewTimer(t.Silence)
	defer silence.Stop()
	total := time.NewTimer(t.Total)
	defer total.Stop()
	var grace, afterResult, killWait <-chan time.Time

	reason := ""
	killed := false
	stop := func(why string) {
		if killed {
			return
		}
		killed, reason = true, why
		kill()
		killWait = time.After(t.KillWait)
	}

	done := ctx.Done()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return reason
			}
			silence.Reset(t.Silence)
			onLine(line)
			firstFatal, result := m.feed(line)
			if firstFatal {
				grace = time.After(t.Grace)
			}
			if result {
				afterResult = time.After(t.AfterResult)
			}
		case <-grace:
			grace = nil
			stop("")
		case <-silence.C:
			stop(fmt.Sprintf("guest hung: no serial output for %v; last line: %q", t.Silence, m.last))
		case <-total.C:
			stop(fmt.Sprintf("run timed out after %v; last line: %q", t.Total, m.last))
		case <-afterResult:
			afterResult = nil
			stop(fmt.Sprintf("guest did not restart within %v after the result line", t.AfterResult))
		case <-done:
			done = nil
			stop(fmt.Sprintf("run canceled: %v", ctx.Err()))
		case <-killWait:
			// QEMU did not exit: stop reading, but keep draining so
			// the goroutine writing the lines is never blocked.
			go func() {
				for range lines {
				}
			}()
			if reason == "" {
				reason = "QEMU was killed after a fatal line"
			}
			return fmt.Sprintf("%s; QEMU did not exit within %v of being killed", reason, t.KillWait)
		}
	}
}
