package service

import (
	"fmt"
	"os"
	"testing"
)

// A process names itself: whatever its name, its start time is read from
// the field the kernel wrote, not from one the name pretends to end with.
func FuzzStartTicks(f *testing.F) {
	f.Add("nix-daemon", uint64(12345))
	f.Add("a) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7", uint64(99))
	f.Add("x\nUid:\t0\t0", uint64(0))
	f.Add(")", uint64(1<<40))
	f.Fuzz(func(t *testing.T, comm string, ticks uint64) {
		stat := fmt.Sprintf("4242 (%s) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 %d 1000 10 18446744073709551615\n", comm, ticks)
		got, err := startTicks([]byte(stat))
		if err != nil || got != ticks {
			t.Fatalf("start time of %q: %d, %v; want %d", stat, got, err, ticks)
		}
	})
}

func TestStartTicksOfThisProcess(t *testing.T) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if ticks, err := startTicks(stat); err != nil || ticks == 0 {
		t.Errorf("startTicks(%q) = %d, %v", stat, ticks, err)
	}
	if _, err := startTicks([]byte("4242 (no closing parenthesis S 1")); err == nil {
		t.Error("a line without the name's end was accepted")
	}
}
