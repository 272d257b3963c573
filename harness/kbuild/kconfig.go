package kbuild

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// Setting is one symbol assignment from a config fragment or a .config.
// Value is "n" both for CONFIG_X=n and for "# CONFIG_X is not set".
type Setting struct {
	Name  string // with the CONFIG_ prefix
	Value string // y, m, n, a number or a quoted string
}

func (s Setting) String() string {
	return s.Name + "=" + s.Value
}

var (
	assignment = regexp.MustCompile(`^(CONFIG_[A-Za-z0-9_]+)=(.*)$`)
	notSet     = regexp.MustCompile(`^# (CONFIG_[A-Za-z0-9_]+) is not set$`)
)

// ParseConfig reads a config fragment or a .config. Comment and blank lines
// are skipped, and when a symbol is assigned twice the later value wins, as
// in the kernel's merge_config.sh. The result keeps first-seen order.
func ParseConfig(r io.Reader) ([]Setting, error) {
	var settings []Setting
	index := make(map[string]int)
	scanner := bufio.NewScanner(r)
	for lineNo := 1; scanner.Scan(); lineNo++ {
		line := strings.TrimSpace(scanner.Text())
		var s Setting
		if m := assignment.FindStringSubmatch(line); m != nil {
			s = Setting{Name: m[1], Value: m[2]}
		} else if m := notSet.FindStringSubmatch(line); m != nil {
			s = Setting{Name: m[1], Value: "n"}
		} else if line == "" || strings.HasPrefix(line, "#") {
			continue
		} else {
			return nil, fmt.Errorf("line %d: invalid config line %q, want CONFIG_NAME=value or a comment", lineNo, line)
		}
		if s.Value == "" {
			return nil, fmt.Errorf("line %d: %s has an empty value", lineNo, s.Name)
		}
		if i, ok := index[s.Name]; ok {
			settings[i] = s
			continue
		}
		index[s.Name] = len(settings)
		settings = append(settings, s)
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	return settings, nil
}

// DroppedError lists the requested settings that kconfig did not keep,
// typically because a dependency is missing or, for a symbol without a
// prompt, because nothing selects it.
type DroppedError struct {
	Dropped []Dropped
}

// Dropped is a requested setting and the value the .config has instead.
type Dropped struct {
	Want Setting
	Got  string // "n" when the .config leaves the symbol unset or omits it
}

func (e *DroppedError) Error() string {
	parts := make([]string, len(e.Dropped))
	for i, d := range e.Dropped {
		parts[i] = fmt.Sprintf("%s (got %s)", d.Want, d.Got)
	}
	return fmt.Sprintf("kconfig dropped %d requested config symbols: %s", len(parts), strings.Join(parts, ", "))
}

// CheckConfig compares the requested settings with the resulting .config.
// A request for n is met when the symbol is unset or absent, and any other
// request is met only when the .config has exactly that value. It returns a
// *DroppedError naming every setting that does not hold.
func CheckConfig(requested, got []Setting) error {
	values := make(map[string]string, len(got))
	for _, s := range got {
		values[s.Name] = s.Value
	}
	var dropped []Dropped
	for _, want := range requested {
		value, ok := values[want.Name]
		if !ok {
			value = "n"
		}
		if value != want.Value {
			dropped = append(dropped, Dropped{Want: want, Got: value})
		}
	}
	if len(dropped) > 0 {
		return &DroppedError{Dropped: dropped}
	}
	return nil
}
