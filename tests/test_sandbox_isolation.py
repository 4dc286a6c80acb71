"""Second round of sandbox attacks: what one program can learn of another job, do to the
machine, or do to a verdict. Each runs in the real sandbox, as the trainer runs programs.

- inherited memory: a program that scans its own address space finds nothing of earlier jobs
  (their code, printed text, input grids or answers), nor the trainer's environment;
- threads: a program gets at most `pool.MAX_THREADS` tasks, whatever it tries, while programs
  on other workers still start theirs; a worker that cannot fork is answered and replaced;
- memory: programs are the OOM killer's first choice; a pool whose workers' limits exceed
  the machine is refused up front, naming both knobs;
- load: limits are CPU time, so a loaded machine gives the same verdicts as an idle one;
- labels: deaths by real-time signals are named by number; a killed program returns no stdout.
"""

import ctypes
import os
import pathlib
import resource
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from arc_jax.execution import (ErrorType, ExecutionConfig, ExecutionMemoryError, ExecutionPool, pool as pool_module,
                               protocol)

GRID = np.array([[1, 2], [3, 4]])

# A memory scanner that needs no file: pages near addresses it knows (its own objects, a
# small and a large malloc, numpy data) are tested with mincore (mapped?) and a harmless
# rt_sigprocmask read (readable? EFAULT if not, EINVAL if so), then searched. Each needle
# comes as two halves that never sit side by side in the scanner's own memory.
SCANNER = textwrap.dedent('''
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.syscall.restype = ctypes.c_long
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    PAGE = 4096
    VECTOR = ctypes.create_string_buffer(64)

    def readable(page):
        if libc.mincore(page, PAGE, VECTOR) != 0:
            return False
        ctypes.set_errno(0)
        libc.syscall(ctypes.c_long(14), ctypes.c_long(99), ctypes.c_void_p(page), ctypes.c_void_p(0), ctypes.c_long(8))
        return ctypes.get_errno() == 22

    def runs(seeds, radius):
        pages = sorted({page for seed in seeds
                        for page in range(max(seed - seed % PAGE - radius, PAGE), seed + radius, PAGE)})
        start = previous = None
        for page in pages:
            if not readable(page):
                continue
            if start is not None and page == previous + PAGE:
                previous = page
                continue
            if start is not None:
                yield start, previous + PAGE
            start = previous = page
        if start is not None:
            yield start, previous + PAGE

    def transform(grid):
        needles = list(zip(HEADS, TAILS))
        large, small = libc.malloc(1 << 22), libc.malloc(64)
        seeds = [id(grid), grid.ctypes.data, id(np), id(ctypes), small, large, id(transform), id(needles), id(libc)]
        libc.free(large)
        hits = [0] * len(needles)
        for begin, end in runs(seeds, RADIUS):
            data = ctypes.string_at(begin, end - begin)
            for k, (head, tail) in enumerate(needles):
                at = data.find(head)
                while at >= 0 and not hits[k]:
                    hits[k] = int(data[at + len(head):at + len(head) + len(tail)] == tail)
                    at = data.find(head, at + 1)
        return [hits]
''')


def scanner(needles: list[bytes]) -> str:
    heads = [n[:len(n) // 2] for n in needles]
    tails = [n[len(n) // 2:] for n in needles]
    return (SCANNER.replace("HEADS", repr(heads)).replace("TAILS", repr(tails))
            .replace("RADIUS", str(128 << 20)))


def test_a_program_finds_nothing_of_earlier_jobs_in_its_memory():
    rng = np.random.default_rng(5)
    secret_input = rng.integers(0, 10, (30, 30))
    answer = (secret_input * 7 + 3) % 10
    code_marker = "QZ" + "8f1c7e2b9a5d4f60" + "c3b1a2e9d7f58410"
    print_marker = "PR" + "5e0a9c1d3b7f2e84" + "9d6c4b2a1e0f3d57"
    # A correct sibling: its code, what it prints, its input and its answer.
    sibling = (f"# {code_marker}\ndef transform(grid):\n    print('{print_marker[:20]}' + '{print_marker[20:]}')\n"
               "    return (grid * 7 + 3) % 10\n")
    needles = [code_marker.encode(), print_marker.encode(), secret_input.astype("<i8").tobytes(),
               answer.astype(np.uint8).tobytes()]
    config = ExecutionConfig(num_workers=1, timeout_s=30, memory_limit_mb=4096)
    with ExecutionPool(config) as pool:  # one worker: the scan runs where the sibling ran
        first = pool.run([(sibling, [secret_input])] * 3)
        assert all(r.error_type is None and print_marker in r.stdout for r in first), first[0]
        found = pool.run([(scanner(needles), [GRID])])[0]
    assert found.error_type is None, found
    assert found.outputs[0].tolist() == [[0, 0, 0, 0]]  # code, printed text, input, answer


def test_the_trainers_environment_stays_out_of_programs(monkeypatch):
    monkeypatch.setenv("ARC_JAX_TEST_TOKEN", "hf_" + "secret" * 4)
    code = ("import os\ndef transform(grid):\n"
            "    return [[int(any('secret' in v for v in os.environ.values())), len(os.environ) > 12]]\n")
    with ExecutionPool(ExecutionConfig(num_workers=1, timeout_s=5, memory_limit_mb=1024)) as pool:
        result = pool.run([(code, [GRID])])[0]
    assert result.error_type is None, result
    assert result.outputs[0].tolist() == [[0, 0]]


@pytest.fixture(scope="module")
def pool():
    config = ExecutionConfig(num_workers=2, timeout_s=1.0, memory_limit_mb=1024, max_output_chars=2000)
    with ExecutionPool(config) as pool:
        yield pool


THREAD_BOMB = textwrap.dedent("""
    import threading, time
    def transform(grid):
        started = 0
        try:
            for _ in range(500):
                threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()
                started += 1
        except RuntimeError:
            pass
        return [[started // 100, started // 10 % 10, started % 10]]
    """)

def test_a_thread_bomb_gets_a_bounded_number_of_threads(pool):
    friendly = textwrap.dedent("""
        import threading
        def transform(grid):
            out = []
            threads = [threading.Thread(target=lambda: out.append(1)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return [[len(out)]]
        """)
    futures = [pool.submit(THREAD_BOMB, [GRID]), pool.submit(friendly, [GRID])]
    bomb, other = [f.result() for f in futures]
    assert bomb.error_type is None, bomb
    started = int("".join(map(str, bomb.outputs[0][0])))
    expected = pool_module.MAX_THREADS - 1 if os.geteuid() == 0 else 0
    assert started == expected
    if os.geteuid() == 0:  # the other worker's program still started its threads
        assert other.error_type is None and other.outputs[0].tolist() == [[4]], other


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user, programs get no threads at all")
def test_a_raw_clone_at_the_limit_is_refused_by_the_kernel(pool):
    # Python's threading is not the only way: fill the program's tasks with sleeping threads,
    # then call clone(2) by hand for one more thread. The kernel refuses it: EAGAIN (11).
    code = textwrap.dedent("""
        import ctypes, threading, time
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  # VM FS FILES SIGHAND THREAD SYSVSEM
        def transform(grid):
            try:
                while True:
                    threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()
            except RuntimeError:
                pass
            ctypes.set_errno(0)
            result = libc.syscall(ctypes.c_long(56), ctypes.c_long(FLAGS), ctypes.c_void_p(0), 0, 0, 0)
            errno = ctypes.get_errno()
            return [[int(result == -1), errno // 10, errno % 10]]
        """)
    result = pool.run([(code, [GRID])])[0]
    assert result.error_type is None, result
    assert result.outputs[0].tolist() == [[1, 1, 1]]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a worker as another user")
def test_a_worker_that_cannot_fork_answers_and_exits(tmp_path):
    # A real fork failure: the worker runs as an ordinary uid whose process limit it has
    # reached already, so its fork gets EAGAIN from the kernel.
    def limited():
        # Real uid 2,999,000 (whose count the limit is on) with effective root (to exec this
        # interpreter), without the two capabilities that would lift the limit.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        for capability in (21, 24):  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE
            assert prctl(24, capability, 0, 0, 0) == 0  # PR_CAPBSET_DROP
        os.setresuid(2_999_000, 0, 0)
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))

    worker = pathlib.Path(protocol.__file__).with_name("worker.py")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen([sys.executable, str(worker), str(theirs.fileno())],
                               pass_fds=(theirs.fileno(),), preexec_fn=limited,
                               env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    theirs.close()
    settings = {"timeout_s": 1.0, "wall_timeout_s": 5.0, "memory_limit_mb": 1024, "entry_point": "transform",
                "max_grid_side": 30, "max_output_chars": 100, "uid": -1, "max_threads": 16}
    common = pathlib.Path(pool_module.__file__).parent.parent / "dsl" / "common.py"
    protocol.send_packet(ours, protocol.SETUP, protocol.encode_setup(str(common), settings))
    assert protocol.receive_packet(ours, time.monotonic() + 60)[0] == protocol.READY
    job_ours, job_theirs = socket.socketpair()
    protocol.send_packet(ours, protocol.RUN, protocol.encode_run(3), (job_theirs.fileno(),))
    job_theirs.close()
    kind, payload, _ = protocol.receive_packet(ours, time.monotonic() + 30)
    job_id, how, _, _, _, message = protocol.decode_ended(payload)
    assert (kind, job_id, how) == (protocol.ENDED, 3, protocol.NOT_STARTED)
    assert "could not start" in message and "Errno 11" in message
    assert process.wait(timeout=30) == 0  # it makes way for a fresh worker
    job_ours.settimeout(5)
    assert job_ours.recv(1) == b""  # and no copy of the job's socket is left open
    ours.close()


def test_programs_are_the_oom_killers_first_choice(pool):
    future = pool.submit("import time\ndef transform(grid):\n    time.sleep(0.5)\n    return grid\n", [GRID])
    deadline, scores = time.monotonic() + 0.4, {}
    while time.monotonic() < deadline and not scores:
        for worker in filter(None, pool.worker_pids()):
            for child in _children(worker):
                try:
                    scores[child] = pathlib.Path(f"/proc/{child}/oom_score_adj").read_text().strip()
                except OSError:
                    pass
    assert future.result().error_type is None
    assert scores and set(scores.values()) == {"1000"}
    assert pathlib.Path("/proc/self/oom_score_adj").read_text().strip() != "1000"  # not the trainer
    for worker in filter(None, pool.worker_pids()):
        assert pathlib.Path(f"/proc/{worker}/oom_score_adj").read_text().strip() == "1000"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_pool_the_machine_cannot_hold_is_refused_naming_both_knobs():
    with pytest.raises(ExecutionMemoryError) as e:
        ExecutionPool(ExecutionConfig(num_workers=64, memory_limit_mb=2**22))
    assert "execution.num_workers" in str(e.value) and "execution.memory_limit_mb" in str(e.value)
    assert "\n" not in str(e.value)


CPU_BOUND = textwrap.dedent("""
    import time
    def transform(grid):
        end = time.process_time() + SECONDS
        while time.process_time() < end:
            pass
        return grid
    """)


@pytest.mark.slow
def test_verdicts_do_not_depend_on_machine_load():
    programs = {"0.6 s of CPU": CPU_BOUND.replace("SECONDS", "0.6"),
                "2 s of CPU": CPU_BOUND.replace("SECONDS", "2.0"),
                "sleeps 1.5 s": "import time\ndef transform(grid):\n    time.sleep(1.5)\n    return grid\n",
                "sleeps forever": "import time\ndef transform(grid):\n    time.sleep(60)\n"}
    jobs = [(code, [GRID]) for code in programs.values()]
    config = ExecutionConfig(num_workers=1, timeout_s=1.0, memory_limit_mb=1024)
    with ExecutionPool(config) as pool:
        idle = [r.error_type for r in pool.run(jobs)]
        # Three busy processes per core: a program gets a quarter of a core at best.
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3 * os.cpu_count())]
        try:
            time.sleep(0.5)
            loaded = [r.error_type for r in pool.run(jobs)]
        finally:
            for process in load:
                process.kill()
                process.wait()
    assert idle == [None, ErrorType.TIMEOUT, None, ErrorType.TIMEOUT]
    assert loaded == idle, dict(zip(programs, loaded))


def test_a_death_by_a_real_time_signal_is_labelled_by_number(pool):
    result = pool.run([("import os, signal\ndef transform(grid):\n    os.kill(os.getpid(), signal.SIGRTMIN + 6)\n",
                        [GRID])])[0]
    assert result.error_type == ErrorType.CRASH
    assert result.error_message == f"the program's process was killed by signal {int(__import__('signal').SIGRTMIN) + 6}"


def test_a_killed_program_returns_no_stdout(pool):
    # It writes its own "printed text" frame, then runs past its limit.
    code = textwrap.dedent("""
        import os, struct
        def transform(grid):
            text = b'I solved it'
            os.write(3, struct.pack('<BBHHHI', 3, 0, 0, 0, 0, len(text)) + text)
            print('and more')
            while True:
                pass
        """)
    result = pool.run([(code, [GRID])])[0]
    assert result.error_type == ErrorType.TIMEOUT and result.stdout == "", result
