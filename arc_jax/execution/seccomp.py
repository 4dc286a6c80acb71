"""An allowlist seccomp filter that confines a program's process (Linux x86-64).

Installed in the forked child just before the program runs. A program needs to compute on
the grids it was given and write its result frames to an open pipe, nothing more, so the
filter permits only the system calls CPython, numpy and scipy make while doing that (memory,
threads, signals to itself, clocks, randomness, reads and writes on descriptors it already
has). Every other call fails with EPERM, whatever the user (root included). In particular:

- no file can be opened, stat'ed or listed: not the datasets, not /proc (other processes'
  memory, descriptors or environment), not the Python installation (modules a program may
  import are imported by the worker beforehand);
- no process creation or exec, no signal to another process, no ptrace;
- no sockets, pipes, io_uring, SysV or POSIX IPC, bpf, perf, fanotify, keys, namespaces,
  mounts, reboot, scheduling of other processes, ioctl (ENOTTY), file handles;
- `clone` only for threads, `prlimit64` only to read, `fcntl` only to read or set FD flags.

The filter cannot be removed by the process, and it is inherited by any thread it starts.
This module uses only the standard library: the worker imports it by file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# Classic BPF opcodes (linux/filter.h).
_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_RET_KILL_PROCESS = 0x80000000
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | errno.EPERM
_RET_ENOSYS = 0x00050000 | errno.ENOSYS  # glibc then falls back to the older, checkable call
_RET_ENOTTY = 0x00050000 | errno.ENOTTY  # "not a terminal": what isatty() expects to hear

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2

# Offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}.
_NR = 0
_ARCH = 4


def _arg_low(i: int) -> int:
    return 16 + 8 * i


def _arg_high(i: int) -> int:
    return 16 + 8 * i + 4


# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) a program may make freely.
_ALLOWED = (
    0,  # read: from descriptors it already has (only /dev/null and its result pipe)
    1,  # write: its result frames; stdio goes to /dev/null
    3,  # close
    5,  # fstat: of its own descriptors
    8,  # lseek
    9,  # mmap: memory (no file can be opened to map)
    10,  # mprotect
    11,  # munmap
    12,  # brk
    13,  # rt_sigaction: Python installs handlers for itself
    14,  # rt_sigprocmask
    15,  # rt_sigreturn
    19,  # readv
    20,  # writev
    24,  # sched_yield
    25,  # mremap
    27,  # mincore
    28,  # madvise: the allocator returns memory
    35,  # nanosleep
    39,  # getpid
    60,  # exit: a thread ends
    63,  # uname
    79,  # getcwd
    96,  # gettimeofday
    97,  # getrlimit
    98,  # getrusage
    100,  # times
    102, 104, 107, 108,  # getuid, getgid, geteuid, getegid
    110, 111,  # getppid, getpgrp
    131,  # sigaltstack
    158,  # arch_prctl: thread-local storage of new threads
    186,  # gettid
    202,  # futex: locks between its threads
    204,  # sched_getaffinity: os.cpu_count()
    218,  # set_tid_address: a new thread
    219,  # restart_syscall
    228, 229, 230,  # clock_gettime, clock_getres, clock_nanosleep
    231,  # exit_group
    273,  # set_robust_list: a new thread
    318,  # getrandom: os.urandom, random.SystemRandom
    334,  # rseq: a new thread
)

_CLONE, _CLONE3, _OPENAT2 = 56, 435, 437
_IOCTL, _FCNTL, _PRLIMIT64 = 16, 72, 302
_KILL, _TKILL, _TGKILL = 62, 200, 234
_CLONE_THREAD = 0x00010000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
_F_GETFD, _F_SETFD, _F_GETFL = 1, 2, 3


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def _returns(nr: int, action: int) -> list:
    """Syscall `nr` returns `action` (an errno or ALLOW) whatever its arguments."""
    return [_insn(_JEQ, nr, 0, 1), _insn(_RET, action)]


def _thread_clone() -> list:
    """clone is allowed only to start a thread (CLONE_THREAD, no namespace flags)."""
    return [
        _insn(_JEQ, _CLONE, 0, 5),
        _insn(_LD_ABS_W, _arg_low(0)),
        _insn(_JSET, _CLONE_NAMESPACES, 2, 0),
        _insn(_JSET, _CLONE_THREAD, 0, 1),
        _insn(_RET, _RET_ALLOW),
        _insn(_RET, _RET_EPERM),
    ]


def _allow_only_values(nr: int, arg: int, values: tuple[int, ...]) -> list:
    """Syscall `nr` is allowed only when the low word of args[arg] is one of `values`."""
    checks = [_insn(_JEQ, value, len(values) - i, 0) for i, value in enumerate(values)]
    return [
        _insn(_JEQ, nr, 0, len(checks) + 3),
        _insn(_LD_ABS_W, _arg_low(arg)),
        *checks,
        _insn(_RET, _RET_EPERM),
        _insn(_RET, _RET_ALLOW),
    ]


def _allow_if_null(nr: int, arg: int) -> list:
    """Syscall `nr` is allowed only when args[arg] (a pointer) is NULL."""
    return [
        _insn(_JEQ, nr, 0, 6),
        _insn(_LD_ABS_W, _arg_low(arg)),
        _insn(_JEQ, 0, 0, 3),
        _insn(_LD_ABS_W, _arg_high(arg)),
        _insn(_JEQ, 0, 0, 1),
        _insn(_RET, _RET_ALLOW),
        _insn(_RET, _RET_EPERM),
    ]


def build_filter(own_pid: int) -> list[tuple[int, int, int, int]]:
    """The filter program as (code, jt, jf, k) instructions, for the process `own_pid`."""
    program = [
        _insn(_LD_ABS_W, _ARCH),
        _insn(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _insn(_RET, _RET_KILL_PROCESS),
        _insn(_LD_ABS_W, _NR),
        _insn(_JGE, _X32_SYSCALL_BIT, 0, 1),
        _insn(_RET, _RET_EPERM),
    ]
    for nr in _ALLOWED:
        program += _returns(nr, _RET_ALLOW)
    program += _returns(_IOCTL, _RET_ENOTTY)
    for nr in (_CLONE3, _OPENAT2):  # their arguments are in memory, out of the filter's reach
        program += _returns(nr, _RET_ENOSYS)
    # Each rule below reloads the accumulator, so it ends in a return; its first jump skips
    # it when the syscall is another one, and the last rule's skip lands on the final EPERM.
    for rule in (
        _thread_clone(),
        _allow_only_values(_KILL, 0, (0, own_pid)),  # itself, or its own process group
        _allow_only_values(_TKILL, 0, (own_pid,)),
        _allow_only_values(_TGKILL, 0, (own_pid,)),
        _allow_only_values(_FCNTL, 1, (_F_GETFD, _F_SETFD, _F_GETFL)),
        _allow_if_null(_PRLIMIT64, 2),  # read a limit, never set one
    ):
        program += rule
    program.append(_insn(_RET, _RET_EPERM))
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PID_PLACEHOLDER = 0xFFFFFFF0  # above any real pid; replaced by the child's pid at install time
_UNPRIVILEGED_ID = 65534  # "nobody": the gid of a child of a root worker, and its uid where its own is not mapped


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


class Sandbox:
    """The filter, prepared once in the worker and installed in each forked child.

    Preparing it ahead keeps the per-child work to a few stores and two prctl calls.
    """

    def __init__(self):
        if not supported():
            raise OSError(f"the program sandbox needs Linux x86-64, not {platform.system()} {platform.machine()}")
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self._prctl.restype = ctypes.c_int
        program = build_filter(_PID_PLACEHOLDER)
        self._pid_offsets = [8 * i + 4 for i, (code, _, _, k) in enumerate(program) if k == _PID_PLACEHOLDER]
        raw = b"".join(struct.pack("=HBBI", *insn) for insn in program)
        self._buffer = ctypes.create_string_buffer(raw, len(raw))
        self._fprog = _SockFprog(len(program), ctypes.addressof(self._buffer))

    def _call_prctl(self, option: int, arg: int, what: str) -> None:
        if self._prctl(option, arg, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({what}) failed")

    def set_dumpable(self, dumpable: bool) -> None:
        """Non-dumpable: processes of the same uid cannot open this one's /proc/<pid>/mem,
        fd/*, environ, nor ptrace it, and it writes no core file."""
        self._call_prctl(_PR_SET_DUMPABLE, int(dumpable), "PR_SET_DUMPABLE")

    def drop_privileges(self, uid: int) -> None:
        """As root: become `uid` (gid 65534) with no supplementary groups, which also clears
        every capability; where `uid` does not exist in this user namespace, 65534. Other
        users (uid < 0) have nothing to give up."""
        if uid < 0 or os.geteuid() != 0:
            return
        os.setgroups([])
        os.setgid(_UNPRIVILEGED_ID)
        try:
            os.setuid(uid)
        except OSError:  # EINVAL: not mapped in this container's user namespace
            os.setuid(_UNPRIVILEGED_ID)

    def die_with_parent(self, signal_number: int) -> None:
        """Have the kernel send `signal_number` to this process when its parent dies."""
        self._call_prctl(_PR_SET_PDEATHSIG, signal_number, "PR_SET_PDEATHSIG")

    def install(self, own_pid: int) -> None:
        """Confine the calling process (whose pid is `own_pid`) for good."""
        for offset in self._pid_offsets:
            struct.pack_into("=I", self._buffer, offset, own_pid)
        self._call_prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
        if self._prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
