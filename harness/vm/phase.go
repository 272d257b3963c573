package vm

import (
	"fmt"
	"strings"
	"time"
)

// phaseTimer measures consecutive phases for the summary line.
type phaseTimer struct {
	names []string
	times []time.Duration
	begin time.Time
	cur   time.Time
}

// start ends the running phase, if any, and starts the named one.
func (p *phaseTimer) start(name string) {
	now := time.Now()
	if p.begin.IsZero() {
		p.begin = now
	} else {
		p.times[len(p.times)-1] = now.Sub(p.cur)
	}
	p.names = append(p.names, name)
	p.times = append(p.times, 0)
	p.cur = now
}

// stop ends the running phase.
func (p *phaseTimer) stop() {
	if len(p.times) > 0 && p.times[len(p.times)-1] == 0 {
		p.times[len(p.times)-1] = time.Since(p.cur)
	}
}

// add records a phase measured elsewhere. It does not count towards the
// total, which stop already covers.
func (p *phaseTimer) add(name string, d time.Duration) {
	p.names = append(p.names, name)
	p.times = append(p.times, d)
}

// summary returns "<total> (<phase> <time>, ...)". The total runs from
// the first start to now.
func (p *phaseTimer) summary() string {
	parts := make([]string, len(p.names))
	for i, name := range p.names {
		parts[i] = fmt.Sprintf("%s %v", name, p.times[i].Round(time.Second/10))
	}
	return fmt.Sprintf("%v (%s)", time.Since(p.begin).Round(time.Second/10), strings.Join(parts, ", "))
}
