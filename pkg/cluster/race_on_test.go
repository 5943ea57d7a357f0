//go:build race

package cluster

// raceEnabled: this test binary runs under the race detector, which slows
// decoding and index building several times over (timing bounds widen).
const raceEnabled = true
