package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Syslog priorities for the <N> prefix of a /dev/kmsg record.
const (
	levelErr  = '3'
	levelInfo = '6'
)

// maxRecord is the longest record written to /dev/kmsg, which rejects a
// longer write with EINVAL. The limit in kernel/printk/printk.c is
// LOG_LINE_MAX (992 bytes) in older kernels and PRINTKRB_RECORD_MAX (1024
// bytes) in newer ones. Longer records are cut.
const maxRecord = 992

// logger writes records to the kernel log, one write per record, tagged
// with the helper's name and pid like a syslog message.
type logger struct {
	mu  sync.Mutex
	w   io.Writer // nil when /dev/kmsg could not be opened
	tag string
}

// openKmsg returns a logger that writes to /dev/kmsg, or one that drops
// every record when /dev/kmsg cannot be opened. Nothing else can take the
// records, because stdout carries the protocol and stderr is /dev/null.
func openKmsg() *logger {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return newLogger(nil)
	}
	return newLogger(f)
}

func newLogger(w io.Writer) *logger {
	return &logger{
		w:   w,
		tag: "umhblob_helper[" + strconv.Itoa(os.Getpid()) + "]: ",
	}
}

// Infof logs a record at KERN_INFO.
func (l *logger) Infof(format string, args ...any) {
	l.printf(levelInfo, format, args...)
}

// Errorf logs a record at KERN_ERR.
func (l *logger) Errorf(format string, args ...any) {
	l.printf(levelErr, format, args...)
}

func (l *logger) printf(level byte, format string, args ...any) {
	if l.w == nil {
		return
	}

	// Keep each record on one line for readers that split on newlines.
	msg := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	rec := make([]byte, 0, 4+len(l.tag)+len(msg))
	rec = append(rec, '<', level, '>')
	rec = append(rec, l.tag...)
	rec = append(rec, msg...)
	if len(rec) > maxRecord-1 {
		rec = rec[:maxRecord-1]
	}
	rec = append(rec, '\n')

	l.mu.Lock()
	defer l.mu.Unlock()
	// A failed write is dropped, because the kernel log is the only log.
	l.w.Write(rec)
}
