//go:build race

package substituter

// The race detector multiplies memory and time: TestMemoryBound then checks
// a smaller NAR against a looser bound, which still catches a NAR held
// whole.
const (
	memoryNAR = 64 << 20
	maxRSS    = 128 << 20
)
