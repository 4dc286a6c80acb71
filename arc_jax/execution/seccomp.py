"""A seccomp filter that confines a program's process (Linux x86-64).

Installed in the forked child just before the program runs. It makes these
system calls fail with EPERM, whatever the user (root included):

- creating processes (fork, vfork, clone without CLONE_THREAD) and exec;
- signalling any process other than the program's own;
- any filesystem change (open for writing, create, delete, rename, chmod, ...);
- sockets, ptrace and other processes' memory;
- leaving the process group (setsid, setpgid), raising resource limits, namespaces.

Threads and reading files stay allowed. The filter cannot be removed by the
process, and it is inherited by any thread the program starts.
This module uses only the standard library: the worker imports it by file.
"""

from __future__ import annotations

import ctypes
import errno
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
_RET_ENOSYS = 0x00050000 | errno.ENOSYS  # lets glibc fall back to the checkable older call

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# Offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}.
_NR = 0
_ARCH = 4


def _arg_low(i: int) -> int:
    return 16 + 8 * i


def _arg_high(i: int) -> int:
    return 16 + 8 * i + 4


_CLONE_THREAD = 0x00010000
# O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND
_OPEN_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
_DENIED = (
    41, 53,  # socket, socketpair
    57, 58, 59, 322,  # fork, vfork, execve, execveat
    101, 310, 311,  # ptrace, process_vm_readv, process_vm_writev
    109, 112,  # setpgid, setsid
    129, 297, 424, 434,  # rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_send_signal, pidfd_open
    160,  # setrlimit
    165, 166, 272, 308,  # mount, umount2, unshare, setns
    76, 77,  # truncate, ftruncate
    82, 264, 316,  # rename, renameat, renameat2
    83, 258, 84,  # mkdir, mkdirat, rmdir
    85, 87, 263,  # creat, unlink, unlinkat
    86, 265, 88, 266,  # link, linkat, symlink, symlinkat
    90, 91, 268, 452,  # chmod, fchmod, fchmodat, fchmodat2
    92, 93, 94, 260,  # chown, fchown, lchown, fchownat
    133, 259,  # mknod, mknodat
    132, 235, 261, 280,  # utime, utimes, futimesat, utimensat
    188, 189, 190, 197, 198, 199,  # setxattr, lsetxattr, fsetxattr, removexattr, lremovexattr, fremovexattr
)
_NOT_IMPLEMENTED = (435, 437)  # clone3, openat2: their arguments are in memory, out of the filter's reach
_CLONE = 56
_OPEN, _OPENAT = 2, 257
_KILL, _TKILL, _TGKILL = 62, 200, 234
_PRLIMIT64 = 302


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def _deny_unless_flag(nr: int, arg: int, flag: int) -> list:
    """Syscall `nr` is allowed only when args[arg] has `flag` set."""
    return [
        _insn(_JEQ, nr, 0, 4),
        _insn(_LD_ABS_W, _arg_low(arg)),
        _insn(_JSET, flag, 1, 0),
        _insn(_RET, _RET_EPERM),
        _insn(_RET, _RET_ALLOW),
    ]


def _deny_if_any_flag(nr: int, arg: int, flags: int) -> list:
    """Syscall `nr` fails when args[arg] has any of `flags` set."""
    return [
        _insn(_JEQ, nr, 0, 4),
        _insn(_LD_ABS_W, _arg_low(arg)),
        _insn(_JSET, flags, 0, 1),
        _insn(_RET, _RET_EPERM),
        _insn(_RET, _RET_ALLOW),
    ]


def _allow_only_target(nr: int, pids: tuple[int, ...]) -> list:
    """Syscall `nr` is allowed only when its first argument (a pid) is one of `pids`."""
    checks = [_insn(_JEQ, pid, len(pids) - i, 0) for i, pid in enumerate(pids)]
    return [
        _insn(_JEQ, nr, 0, len(checks) + 3),
        _insn(_LD_ABS_W, _arg_low(0)),
        *checks,
        _insn(_RET, _RET_EPERM),
        _insn(_RET, _RET_ALLOW),
    ]


def _deny_if_pointer_set(nr: int, arg: int) -> list:
    """Syscall `nr` fails when args[arg] (a pointer) is not NULL."""
    return [
        _insn(_JEQ, nr, 0, 6),
        _insn(_LD_ABS_W, _arg_low(arg)),
        _insn(_JEQ, 0, 0, 2),
        _insn(_LD_ABS_W, _arg_high(arg)),
        _insn(_JEQ, 0, 1, 0),
        _insn(_RET, _RET_EPERM),
        _insn(_RET, _RET_ALLOW),
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
    for nr in _DENIED:
        program += [_insn(_JEQ, nr, 0, 1), _insn(_RET, _RET_EPERM)]
    for nr in _NOT_IMPLEMENTED:
        program += [_insn(_JEQ, nr, 0, 1), _insn(_RET, _RET_ENOSYS)]
    # Each rule below reloads the accumulator, so it ends in a return.
    rules = [
        _deny_unless_flag(_CLONE, 0, _CLONE_THREAD),
        _deny_if_any_flag(_OPEN, 1, _OPEN_WRITE_FLAGS),
        _deny_if_any_flag(_OPENAT, 2, _OPEN_WRITE_FLAGS),
        _allow_only_target(_KILL, (0, own_pid)),
        _allow_only_target(_TKILL, (own_pid,)),
        _allow_only_target(_TGKILL, (own_pid,)),
        _deny_if_pointer_set(_PRLIMIT64, 2),
    ]
    for rule in rules:
        # A rule's first jump skips the rule when the syscall is another one;
        # the last rule's skip lands on the final ALLOW.
        program += rule
    program.append(_insn(_RET, _RET_ALLOW))
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PID_PLACEHOLDER = 0xFFFFFFF0  # above any real pid; replaced by the child's pid at install time
_PR_SET_PDEATHSIG = 1


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
