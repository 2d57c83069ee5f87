//go:build race

package ztunnel

// raceEnabled: the race detector slows the data path about tenfold, so
// bulk tests move less data.
const raceEnabled = true
