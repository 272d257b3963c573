package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecideAccel(t *testing.T) {
	tests := []struct {
		name    string
		outcome probeOutcome
		want    string
		reason  string // a substring of the reason
	}{
		{
			name:    "guest booted",
			outcome: probeOutcome{Exited: true, Banner: true, Elapsed: 900 * time.Millisecond},
			want:    AccelKVM,
			reason:  "booted in 900ms",
		},
		{
			name:    "guest booted, QEMU status 1",
			outcome: probeOutcome{Exited: true, ExitErr: errors.New("exit status 1"), Banner: true},
			want:    AccelKVM,
		},
		{
			name:    "no device",
			outcome: probeOutcome{DeviceErr: os.ErrNotExist},
			want:    AccelTCG,
			reason:  "KVM unusable",
		},
		{
			name:    "QEMU missing",
			outcome: probeOutcome{StartErr: errors.New(`exec: "qemu-system-x86_64": executable file not found in $PATH`)},
			want:    AccelTCG,
			reason:  "did not start",
		},
		{
			name:    "hang after the BIOS",
			outcome: probeOutcome{LastLine: "Booting from ROM...", Timeout: 5 * time.Second},
			want:    AccelTCG,
			reason:  `printed no kernel line within 5s; last line "Booting from ROM..."`,
		},
		{
			name:    "hang during boot",
			outcome: probeOutcome{Banner: true, LastLine: "smpboot: CPU0: AMD EPYC", Timeout: 5 * time.Second},
			want:    AccelTCG,
			reason:  "did not finish booting within 5s",
		},
		{
			name:    "QEMU failed at once",
			outcome: probeOutcome{Exited: true, ExitErr: errors.New("exit status 1: Could not access KVM kernel module: Permission denied")},
			want:    AccelTCG,
			reason:  "Permission denied",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := decideAccel(tt.outcome)
			if got != tt.want {
				t.Errorf("decideAccel = %s (%s), want %s", got, reason, tt.want)
			}
			if !strings.Contains(reason, tt.reason) {
				t.Errorf("decideAccel reason = %q, want it to contain %q", reason, tt.reason)
			}
		})
	}
}

// fakeQEMUScriptT writes a shell script that replaces QEMU in the probe
// and returns its path.
func fakeQEMUScriptT(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeDeviceT returns a file that the probe can open in place of
// /dev/kvm.
func fakeDeviceT(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProbeKVMWithFakeQEMU(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   string
	}{
		{"boots and exits", `printf 'SeaBIOS\r\n[    0.000000] Linux version 6.1.192\r\n[    0.5] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n'`, AccelKVM},
		{"hangs after the BIOS", "echo 'Booting from ROM..'; exec sleep 60", AccelTCG},
		{"hangs after the banner", "echo 'Linux version 6.1.192'; exec sleep 60", AccelTCG},
		{"fails at once", "echo 'Could not access KVM kernel module' >&2; exit 1", AccelTCG},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			o := probeKVM(context.Background(), probeConfig{
				QEMU:    fakeQEMUScriptT(t, tt.script),
				Kernel:  "/nonexistent/bzImage",
				CPUs:    1,
				Device:  fakeDeviceT(t),
				Timeout: 500 * time.Millisecond,
			})
			got, reason := decideAccel(o)
			if got != tt.want {
				t.Errorf("decision = %s (%s), want %s", got, reason, tt.want)
			}
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("probe took %v with a 500ms bound", elapsed)
			}
		})
	}
}

func TestProbeKVMWithoutDevice(t *testing.T) {
	o := probeKVM(context.Background(), probeConfig{
		QEMU:    fakeQEMUScriptT(t, "exit 0"),
		Device:  filepath.Join(t.TempDir(), "no-such-device"),
		Timeout: time.Second,
	})
	if !errors.Is(o.DeviceErr, os.ErrNotExist) {
		t.Errorf("DeviceErr = %v, want os.ErrNotExist", o.DeviceErr)
	}
	if got, _ := decideAccel(o); got != AccelTCG {
		t.Errorf("decision = %s, want tcg", got)
	}
}

func TestChooseAccelRequested(t *testing.T) {
	for _, accel := range []string{AccelKVM, AccelTCG} {
		got, why, err := chooseAccel(context.Background(), &Config{Accel: accel})
		if err != nil || got != accel || why != "requested" {
			t.Errorf("chooseAccel(%s) = %s, %q, %v, want %s, \"requested\", nil", accel, got, why, err, accel)
		}
	}
	if _, _, err := chooseAccel(context.Background(), &Config{Accel: "hvf"}); err == nil {
		t.Error("chooseAccel(hvf) error = nil, want an error")
	}
}

func TestChooseAccelProbesOnce(t *testing.T) {
	counter := filepath.Join(t.TempDir(), "runs")
	script := fakeQEMUScriptT(t, "echo run >> "+counter+"; echo 'Linux version 6.1.192'")
	cfg := &Config{Accel: AccelAuto, QEMU: script, Kernel: "/nonexistent/bzImage", CPUs: 1, KVMProbeTimeout: 2 * time.Second}

	first, _, err := chooseAccel(context.Background(), cfg)
	if err != nil {
		t.Fatalf("first chooseAccel: %v", err)
	}
	second, why, err := chooseAccel(context.Background(), cfg)
	if err != nil {
		t.Fatalf("second chooseAccel: %v", err)
	}
	if second != first || !strings.Contains(why, "probed earlier") {
		t.Errorf("second chooseAccel = %s, %q, want %s from the first probe", second, why, first)
	}
	// Without a usable /dev/kvm the probe never starts QEMU.
	data, _ := os.ReadFile(counter)
	if runs := strings.Count(string(data), "run"); runs > 1 {
		t.Errorf("QEMU ran %d times for two calls, want at most 1", runs)
	}
}
