package cniproto

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// nsGetNSType is NS_GET_NSTYPE, _IO(0xb7, 0x3), from linux/nsfs.h.
const nsGetNSType = 0xb703

// NetnsInode checks that fd refers to a network namespace (an nsfs file of
// type CLONE_NEWNET) and returns the namespace's inode number, which
// identifies it on this host while it lives.
func NetnsInode(fd int) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return 0, fmt.Errorf("cniproto: netns fd: fstatfs: %w", err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("cniproto: netns fd: %w: not a namespace file (filesystem type %#x)", ErrInvalid, fs.Type)
	}
	typ, err := unix.IoctlRetInt(fd, nsGetNSType)
	switch {
	case errors.Is(err, unix.ENOTTY): // kernel < 4.11: nsfs alone must do
	case err != nil:
		return 0, fmt.Errorf("cniproto: netns fd: NS_GET_NSTYPE: %w", err)
	case typ != unix.CLONE_NEWNET:
		return 0, fmt.Errorf("cniproto: netns fd: %w: a namespace of type %#x, not a network namespace", ErrInvalid, typ)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("cniproto: netns fd: fstat: %w", err)
	}
	return st.Ino, nil
}

// OpenNetns opens the network namespace at path read-only and close-on-exec
// and checks it is one; it returns the descriptor and the namespace inode.
func OpenNetns(path string) (int, uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("cniproto: open netns %s: %w", path, err)
	}
	ino, err := NetnsInode(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("%s: %w", path, err)
	}
	return fd, ino, nil
}
