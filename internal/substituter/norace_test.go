//go:build !race

package substituter

// memoryNAR is the size of the NAR TestMemoryBound substitutes; the bound
// on the proxy's peak RSS is maxRSS whatever the size.
const (
	memoryNAR = 1 << 30
	maxRSS    = 64 << 20
)
