"""The few Linux system calls the sandbox needs that Python's `os` module lacks.

openat2 (resolution confined beneath a directory fd), mount/umount2, unshare and setns, called
through libc with ctypes. Each raises OSError with the call's errno, like `os` functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)

# openat2 is syscall 437 on every architecture that has it (it was added after the unified table).
_SYS_OPENAT2 = 437 if platform.machine() in ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x") else -1
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000

_openat2_works: bool | None = None if _SYS_OPENAT2 > 0 else False


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def openat2_beneath(dir_fd: int, path: str, flags: int, mode: int = 0) -> int | None:
    """Open `path` strictly beneath `dir_fd`, refusing every symlink and mount crossing.

    Returns None where the kernel has no openat2 (before 5.6, or seccomp forbids it), so the
    caller falls back to a component-by-component O_NOFOLLOW walk.
    """
    global _openat2_works
    if _openat2_works is False:
        return None
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    buf = ctypes.create_string_buffer(how, len(how))
    fd = _libc.syscall(_SYS_OPENAT2, dir_fd, path.encode(), buf, ctypes.c_size_t(len(how)))
    if fd < 0:
        err = ctypes.get_errno()
        if err in (38, 1) and _openat2_works is None:  # ENOSYS, or EPERM from a seccomp filter
            _openat2_works = False
            return None
        raise OSError(err, os.strerror(err), path)
    _openat2_works = True
    return int(fd)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        _raise(f"mount {source} on {target}")


def umount_lazy(target: str) -> None:
    """umount2(target, MNT_DETACH); a target that is not mounted is ignored."""
    if _libc.umount2(target.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (22, 2):  # EINVAL, ENOENT
        _raise(f"umount {target}")


def unshare_mounts() -> None:
    """A private mount namespace for the calling process (used in a child before exec)."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        _raise("unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE)


def unshare_network() -> None:
    """A new, empty network namespace for the calling thread (its other threads keep theirs)."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        _raise("unshare(CLONE_NEWNET)")


def enter_network(ns_fd: int) -> None:
    """setns(2) into the network namespace behind `ns_fd`, for the calling thread only."""
    if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
        _raise("setns(CLONE_NEWNET)")
