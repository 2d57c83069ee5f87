//go:build !race

package ztunnel

const raceEnabled = false
