package hbone

import (
	"math/bits"
	"sync"
)

// frameHeaderLen is the size of an HTTP/2 frame header. Send buffers keep
// this much headroom so a DATA frame is written with one call and no copy.
const frameHeaderLen = 9

// Buffer size classes: powers of two from minBufShift to maxBufShift.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 20 // 1 MiB, our SETTINGS_MAX_FRAME_SIZE
)

// bufPools holds one pool per size class; index i holds buffers of
// 1<<(minBufShift+i) bytes. Pools hold *[]byte so Put does not allocate.
var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// getBuf returns a pooled buffer of at least n bytes (n ≤ 1 MiB).
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<(minBufShift+c))
	return &b
}

// putBuf returns a buffer obtained from getBuf; nil is ignored.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := sizeClass(cap(*p))
	if 1<<(minBufShift+c) != cap(*p) {
		return // not one of ours
	}
	*p = (*p)[:cap(*p)]
	bufPools[c].Put(p)
}

// sizeClass returns the index of the smallest class holding n bytes.
func sizeClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	c := bits.Len(uint(n-1)) - minBufShift
	if c > maxBufShift-minBufShift {
		panic("hbone: buffer request too large")
	}
	return c
}
