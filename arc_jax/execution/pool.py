"""ExecutionPool: runs untrusted programs on ARC grids in sandboxed warm workers.

Each pool slot is a worker process (worker.py) that imported numpy, scipy and the DSL once
and forks a fresh sandboxed process per program. The worker is only a template: it never
sees a job. For each job the pool makes a socket, hands one end to the worker, which forks
the program's process on it, then writes the job (code, input grids) to that process and
reads its result frames directly. So no program can find an earlier job's code, inputs,
outputs or printed text in the memory it inherited. A dispatcher thread per slot feeds it
jobs from a shared queue, so `submit` returns at once and the caller (e.g. the trainer's
main loop) keeps working. A worker that dies, stops answering or cannot fork is replaced;
its job still gets a result (a Crash).

What a program may not do, and what happens instead (see seccomp.py, worker.py):
- use more than `timeout_s` of CPU time (all its threads, all inputs together) -> Timeout;
  the same for more than `wall_timeout_s` of wall-clock time (a program that sleeps or
  blocks), 5 x timeout_s by default, so machine load does not change a verdict;
- use more than `memory_limit_mb` of address space -> MemoryError;
- run more than `max_threads` threads (16; none where the pool cannot give each slot its
  own uid, i.e. not run by root): starting one more fails in the program;
- open, stat or list any file (datasets, /proc, the Python installation), create
  processes, exec, use sockets, pipes or IPC, signal or trace other processes, ioctl, or
  any other system call outside the allowlist: an OSError (PermissionError) in the program;
- import a module the worker did not import beforehand (worker.PRELOADED): ImportError;
- end its process (sys.exit, os._exit) -> Exit; die by a signal -> Crash.
Run by root, a program's process runs as a uid of its pool slot (gid 65534) with no
capabilities. Workers and programs are the OOM killer's first choice (oom_score_adj 1000).
The pool (the trainer) and its workers are non-dumpable, and no pickle crosses a process
boundary. `stdout` holds what the program printed when it finished; "" when it was killed.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

import numpy as np

from arc_jax.errors import UserError
from arc_jax.execution import protocol, seccomp
from arc_jax.execution.config import ErrorType, ExecutionConfig, ExecutionResult

_WORKER_SCRIPT = os.path.join(os.path.dirname(__file__), "worker.py")
_DEFAULT_COMMON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "dsl", "common.py")
_STARTUP_TIMEOUT_S = 120.0
_REPLY_GRACE_S = 10.0  # beyond wall_timeout_s, for the worker's own fork/reap/reply
_SLOT_UID_BASE = 2_000_000  # run by root, slot i's programs run as uid _SLOT_UID_BASE + i
MAX_THREADS = 16  # tasks a program's process may have, its main thread included
_ENVIRONMENT = ("PATH", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "TZ")


class ExecutionMemoryError(UserError, ValueError):
    """The workers' memory limits together exceed what this machine has."""


def machine_memory_bytes() -> int:
    """This machine's memory: MemTotal, or the memory limit of this process's cgroup where lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_machine_memory(num_workers: int, memory_limit_mb: int) -> None:
    """Raises ExecutionMemoryError when `num_workers` programs at `memory_limit_mb` each could
    need more memory than the machine has (num_workers 0: one per core)."""
    workers = num_workers or os.cpu_count()
    have = machine_memory_bytes()
    if workers * memory_limit_mb * 2**20 > have:
        raise ExecutionMemoryError(
            f"execution.num_workers={num_workers} ({workers} workers) x execution.memory_limit_mb="
            f"{memory_limit_mb} = {workers * memory_limit_mb / 1024:.1f} GiB: more than this machine's "
            f"{have / 2**30:.1f} GiB of memory (expected a product that fits; lower one of them)")


class WorkerStartError(UserError, RuntimeError):
    """A worker process could not start (e.g. the DSL file does not import)."""


def _failure(error_type: str, message: str, num_inputs: int, duration_s: float = 0.0) -> ExecutionResult:
    return ExecutionResult((None,) * num_inputs, error_type, message, "", duration_s)


def _input_grid(grid: object, index: int) -> np.ndarray:
    array = np.asarray(grid)
    if array.ndim != 2 or array.dtype.kind not in "iu" or not all(1 <= n <= 65535 for n in array.shape):
        raise ValueError(f"input {index} has shape {array.shape} and dtype {array.dtype}; expected a 2-D int grid "
                         "with sides of 1 to 65535")
    return np.array(array, dtype=np.int64)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"


class _Frames:
    """Assembles a job's result from the program's frames, checking each one."""

    def __init__(self, num_inputs: int, max_grid_side: int):
        self.outputs = [None] * num_inputs
        self.errors = {}  # input index -> (error type, message); -1 = the program as a whole
        self.stdout = ""
        self.done = False
        self._max_side = max_grid_side

    def add(self, kind: int, code: int, index: int, rows: int, cols: int, payload: bytes) -> None:
        if self.done:
            raise protocol.MalformedFrame("a frame after the last one")
        if kind in (protocol.INPUT_ERROR, protocol.OUTPUT) and index >= len(self.outputs):
            raise protocol.MalformedFrame(f"input index {index} out of range")
        if kind == protocol.OUTPUT:
            if not (1 <= rows <= self._max_side and 1 <= cols <= self._max_side) or len(payload) != rows * cols:
                raise protocol.MalformedFrame(f"bad grid frame {rows}x{cols} with {len(payload)} bytes")
            if max(payload) > 9:
                raise protocol.MalformedFrame("grid value above 9")
            self.outputs[index] = np.frombuffer(payload, dtype=np.uint8).reshape(rows, cols).astype(np.int64)
        elif kind in (protocol.INPUT_ERROR, protocol.PROGRAM_ERROR):
            if code >= len(ErrorType.ALL):
                raise protocol.MalformedFrame(f"unknown error code {code}")
            key = index if kind == protocol.INPUT_ERROR else -1
            self.errors[key] = (ErrorType.ALL[code], payload.decode("utf-8", "replace"))
        elif kind == protocol.STDOUT:
            self.stdout = payload.decode("utf-8", "replace")
        else:
            self.done = True

    def first_error(self) -> tuple[str | None, str]:
        if not self.errors:
            return None, ""
        return self.errors[min(self.errors)]


def _verdict(frames: _Frames, problem: str | None, ended: tuple, config: ExecutionConfig,
             num_inputs: int) -> ExecutionResult:
    """The ExecutionResult of a job from its frames and how its process ended."""
    how, status, cpu_s, wall_s, message = ended
    if how == protocol.NOT_STARTED:
        return _failure(ErrorType.CRASH, message, num_inputs, wall_s)
    if how == protocol.CPU_LIMIT or cpu_s > config.timeout_s or (
            os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
        text = f"the program used more than its {config.timeout_s} s of CPU time and was killed"
        return _failure(ErrorType.TIMEOUT, text, num_inputs, wall_s)
    if how == protocol.WALL_LIMIT:
        text = (f"the program ran past its {config.wall_timeout_s} s wall-clock limit (it slept or blocked) "
                "and was killed")
        return _failure(ErrorType.TIMEOUT, text, num_inputs, wall_s)
    if problem is not None:
        return _failure(ErrorType.CRASH, f"the program's process wrote bytes that are not a result: {problem}",
                        num_inputs, wall_s)
    if not frames.done:
        if os.WIFSIGNALED(status):
            text = f"the program's process was killed by {_signal_name(os.WTERMSIG(status))}"
            return _failure(ErrorType.CRASH, text, num_inputs, wall_s)
        text = f"the program's process exited with status {os.WEXITSTATUS(status)} before sending its results"
        return _failure(ErrorType.EXIT, text, num_inputs, wall_s)
    error_type, text = frames.first_error()
    if error_type is None and any(grid is None for grid in frames.outputs):
        return _failure(ErrorType.CRASH, "the program's process finished without all outputs", num_inputs, wall_s)
    return ExecutionResult(tuple(frames.outputs), error_type, text, frames.stdout, wall_s)


class _Slot:
    """One worker process and the socket to it; restarted on the next job after it fails."""

    def __init__(self, index: int, common_path: str, config: ExecutionConfig):
        self._common_path = common_path
        self._config = config
        self._uid = _SLOT_UID_BASE + index if os.geteuid() == 0 else -1
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._job_ids = itertools.count()
        # A frame's payload is a grid or a truncated text (up to 4 UTF-8 bytes a character,
        # plus a note); a finished program sends an output or an error per input, its
        # printed text and one last frame.
        self._max_payload = max(config.max_grid_side ** 2, 4 * config.max_output_chars + 200)

    def spawn(self) -> None:
        # Only what finds Python and its libraries: the caller's environment (tokens, keys)
        # stays out of the workers, and so out of every program's memory.
        env = {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ}
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._process = subprocess.Popen([sys.executable, _WORKER_SCRIPT, str(theirs.fileno())],
                                             pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        settings = {"timeout_s": float(self._config.timeout_s), "wall_timeout_s": float(self._config.wall_timeout_s),
                    "memory_limit_mb": self._config.memory_limit_mb, "entry_point": self._config.entry_point,
                    "max_grid_side": self._config.max_grid_side, "max_output_chars": self._config.max_output_chars,
                    "uid": self._uid, "max_threads": MAX_THREADS}
        protocol.send_packet(self._control, protocol.SETUP, protocol.encode_setup(self._common_path, settings))

    def wait_ready(self) -> None:
        try:
            reply = protocol.receive_packet(self._control, time.monotonic() + _STARTUP_TIMEOUT_S)
            reason = "it exited (see its stderr)" if reply is None else None
        except TimeoutError:
            reply, reason = None, f"no answer within {_STARTUP_TIMEOUT_S} s"
        except (OSError, protocol.MalformedMessage) as e:
            reply, reason = None, str(e)
        if reply is not None and reply[0] == protocol.FAILED:
            reason = reply[1].decode("utf-8", "replace")
        elif reply is not None and (reply[0] != protocol.READY or len(reply[1]) != 4):
            reason = f"it answered message kind {reply[0]} instead of READY"
        if not reason:  # one trivial program through the whole sandbox
            grid = np.array([[1, 2], [3, 4]])
            result = self._execute(f"def {self._config.entry_point}(g):\n    return g[::-1]\n", [grid])
            if result.error_type is not None or not np.array_equal(result.outputs[0], grid[::-1]):
                reason = f"the sandbox self-test failed: {result.error_type}: {result.error_message}"
        if reason:
            self.stop(kill=True)
            raise WorkerStartError(f"an execution worker failed to start: {reason}")

    def execute(self, code: str, inputs: list[np.ndarray]) -> ExecutionResult:
        if self._process is None:
            self.spawn()
            self.wait_ready()
        return self._execute(code, inputs)

    def _execute(self, code: str, inputs: list[np.ndarray]) -> ExecutionResult:
        job_id = next(self._job_ids)
        start = time.monotonic()
        deadline = start + self._config.wall_timeout_s + _REPLY_GRACE_S
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with theirs:
                protocol.send_packet(self._control, protocol.RUN, protocol.encode_run(job_id), (theirs.fileno(),))
            job = protocol.encode_job(job_id, code, inputs)
            frames, problem = self._exchange(ours, job, len(inputs), deadline)
            ours.close()
            ended = self._ended(job_id, deadline)
            failure = None if ended is not None else "the worker process died"
        except TimeoutError:
            failure = "the worker process stopped answering"
        except OSError as e:  # e.g. BrokenPipeError: the worker is gone
            failure = f"the worker process died ({e})"
        except protocol.MalformedMessage as e:
            failure = f"the worker's reply is malformed ({e})"
        finally:
            ours.close()
        if failure is not None:
            self.stop(kill=True)
            return _failure(ErrorType.CRASH, failure, len(inputs), time.monotonic() - start)
        if ended[0] == protocol.NOT_STARTED:
            self.stop(kill=True)  # it could not fork: the next job gets a fresh worker
        return _verdict(frames, problem, ended, self._config, len(inputs))

    def _exchange(self, sock: socket.socket, job: bytes, num_inputs: int, deadline: float) -> tuple[_Frames, str | None]:
        """Send the job to the program's process and collect its frames until it is done,
        closes its end (it ended), or sends what no program may; (frames, the problem)."""
        frames = _Frames(num_inputs, self._config.max_grid_side)
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            message = memoryview(protocol.message(protocol.JOB, job))
            while message:  # the process reads it as it starts; it may also die first
                message = message[sock.send(message, socket.MSG_NOSIGNAL):]
        except (BrokenPipeError, ConnectionResetError):
            return frames, None
        except socket.timeout:
            raise TimeoutError("the job was not read") from None
        budget = (num_inputs + 3) * (protocol.HEADER.size + self._max_payload)
        buffer, received = bytearray(), 0
        while not frames.done:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                raise TimeoutError("no end of the program's frames") from None
            if not chunk:
                break
            received += len(chunk)
            buffer += chunk
            try:
                if received > budget:
                    raise protocol.MalformedFrame(f"more than {budget} bytes")
                for frame in protocol.split_frames(buffer, self._max_payload):
                    frames.add(*frame)
            except protocol.MalformedFrame as e:
                return frames, str(e)
        return frames, None

    def _ended(self, job_id: int, deadline: float) -> tuple | None:
        reply = protocol.receive_packet(self._control, deadline)
        if reply is None:
            return None
        kind, payload, fds = reply
        for fd in fds:
            os.close(fd)
        if kind != protocol.ENDED:
            raise protocol.MalformedMessage(f"message kind {kind} instead of ENDED")
        answered, *ended = protocol.decode_ended(payload)
        if answered != job_id:
            raise protocol.MalformedMessage(f"an answer to job {answered}, expected {job_id}")
        return tuple(ended)

    def stop(self, kill: bool = False) -> None:
        """End the worker process: close its socket, then kill it if it lingers (or at once)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if kill:
            process.kill()
        self._control.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid


class ExecutionPool:
    """Runs programs in sandboxed warm workers; a context manager.

    Every submitted program gets exactly one ExecutionResult. `close` (or leaving
    the `with` block) finishes the jobs already submitted, then stops the workers.
    """

    def __init__(self, config: ExecutionConfig = ExecutionConfig()):
        if not seccomp.supported():
            raise OSError("ExecutionPool's sandbox needs Linux on x86-64")
        # No program's process can open files, but if one ever could, it must not be able
        # to read this process's memory, descriptors or environment through /proc.
        seccomp.Sandbox().set_dumpable(False)
        check_machine_memory(config.num_workers, config.memory_limit_mb)
        common_path = config.common_path or _DEFAULT_COMMON
        if not os.path.isfile(common_path):
            raise FileNotFoundError(f"the DSL file {common_path} does not exist (ExecutionConfig.common_path)")
        self.config = config
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._slots = [_Slot(i, os.path.abspath(common_path), config)
                       for i in range(config.num_workers or os.cpu_count())]
        try:
            for slot in self._slots:
                slot.spawn()
            for slot in self._slots:
                slot.wait_ready()
        except BaseException:
            for slot in self._slots:
                slot.stop(kill=True)
            raise
        self._threads = [threading.Thread(target=self._serve, args=(slot,), daemon=True) for slot in self._slots]
        for thread in self._threads:
            thread.start()

    def submit(self, code: str, inputs: Sequence[np.ndarray]) -> concurrent.futures.Future:
        """Queue `code` to run on each grid of `inputs`; the future gives its ExecutionResult."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        grids = [_input_grid(grid, i) for i, grid in enumerate(inputs)]
        future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the ExecutionPool is closed")
            self._queue.put((future, code, grids))
        return future

    def run(self, jobs: Sequence[tuple[str, Sequence[np.ndarray]]]) -> list[ExecutionResult]:
        """Run (code, inputs) jobs and wait for all; results in the order of `jobs`."""
        futures = [self.submit(code, inputs) for code, inputs in jobs]
        return [future.result() for future in futures]

    def worker_pids(self) -> list[int | None]:
        """Process ids of the workers (None for one being replaced)."""
        return [slot.pid for slot in self._slots]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> ExecutionPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _serve(self, slot: _Slot) -> None:
        while (item := self._queue.get()) is not None:
            future, code, inputs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = slot.execute(code, inputs)
            except BaseException as e:  # e.g. a replacement worker that cannot start: still answer the job
                slot.stop(kill=True)
                result = _failure(ErrorType.CRASH, f"the job could not run: {e}", len(inputs))
            future.set_result(result)
        slot.stop()
