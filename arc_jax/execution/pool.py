"""ExecutionPool: runs untrusted programs on ARC grids in sandboxed warm workers.

Each pool slot is a worker process (worker.py) that imported numpy, scipy and
the DSL once and forks a fresh sandboxed child per program. A dispatcher thread
per slot feeds it jobs from a shared queue, so `submit` returns at once and the
caller (e.g. the trainer's main loop) keeps working. A worker that dies or
stops answering is replaced; its job still gets a result (a Crash).

What a program may not do, and what happens instead (see seccomp.py, worker.py):
- run past `timeout_s` (wall clock, all inputs together): killed -> Timeout;
- use more than `memory_limit_mb` of address space -> MemoryError;
- open, stat or list any file (datasets, /proc, the Python installation), create
  processes, exec, use sockets, pipes or IPC, signal or trace other processes, ioctl, or
  any other system call outside the allowlist: an OSError (PermissionError) in the program;
- import a module the worker did not import beforehand (worker.PRELOADED): ImportError;
- end its process (sys.exit, os._exit) -> Exit; die by a signal -> Crash.
Run by root, a program's process runs as uid/gid 65534 with no capabilities. The pool
(the trainer) and its workers are non-dumpable, and no pickle crosses a process boundary.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Sequence

import numpy as np

from arc_jax.execution import protocol, seccomp
from arc_jax.execution.config import ErrorType, ExecutionConfig, ExecutionResult

_WORKER_SCRIPT = os.path.join(os.path.dirname(__file__), "worker.py")
_DEFAULT_COMMON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "dsl", "common.py")
_STARTUP_TIMEOUT_S = 120.0
_REPLY_GRACE_S = 10.0  # beyond timeout_s, for the worker's own fork/reap/reply


class WorkerStartError(RuntimeError):
    """A worker process could not start (e.g. the DSL file does not import)."""


def _failure(error_type: str, message: str, num_inputs: int, duration_s: float = 0.0) -> ExecutionResult:
    return ExecutionResult((None,) * num_inputs, error_type, message, "", duration_s)


def _input_grid(grid: object, index: int) -> np.ndarray:
    array = np.asarray(grid)
    if array.ndim != 2 or array.dtype.kind not in "iu" or not all(1 <= n <= 65535 for n in array.shape):
        raise ValueError(f"input {index} has shape {array.shape} and dtype {array.dtype}; expected a 2-D int grid "
                         "with sides of 1 to 65535")
    return np.array(array, dtype=np.int64)




class _Slot:
    """One worker process and the pipes to it; restarted on the next job after it fails."""

    def __init__(self, common_path: str, config: ExecutionConfig):
        self._common_path = common_path
        self._config = config
        self._process: subprocess.Popen | None = None
        self._job_ids = itertools.count()

    def spawn(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        self._process = subprocess.Popen(
            [sys.executable, _WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        settings = {name: kind(getattr(self._config, name)) for name, kind in protocol.SETTINGS.items()}
        protocol.write_message(self._process.stdin.fileno(), protocol.SETUP,
                               protocol.encode_setup(self._common_path, settings))

    def wait_ready(self) -> None:
        try:
            reply = protocol.read_message(self._process.stdout.fileno(), time.monotonic() + _STARTUP_TIMEOUT_S)
            reason = "it exited (see its stderr)" if reply is None else None
        except TimeoutError:
            reply, reason = None, f"no answer within {_STARTUP_TIMEOUT_S} s"
        except protocol.MalformedMessage as e:
            reply, reason = None, str(e)
        if reply is not None and reply[0] == protocol.FAILED:
            reason = reply[1].decode("utf-8", "replace")
        elif reply is not None and (reply[0] != protocol.READY or len(reply[1]) != 4):
            reason = f"it answered message kind {reply[0]} instead of READY"
        if reason:
            self.stop(kill=True)
            raise WorkerStartError(f"an execution worker failed to start: {reason}")

    def execute(self, code: str, inputs: list[np.ndarray]) -> ExecutionResult:
        if self._process is None:
            self.spawn()
            self.wait_ready()
        job_id = next(self._job_ids)
        start = time.monotonic()
        try:
            protocol.write_message(self._process.stdin.fileno(), protocol.JOB, protocol.encode_job(job_id, code, inputs))
            reply = protocol.read_message(self._process.stdout.fileno(), start + self._config.timeout_s + _REPLY_GRACE_S)
            result = None if reply is None else self._decode(reply, job_id, len(inputs))
            problem = "the worker process died"
        except TimeoutError:
            result, problem = None, "the worker process stopped answering"
        except OSError as e:  # e.g. BrokenPipeError: the worker is gone
            result, problem = None, f"the worker process died ({e})"
        except protocol.MalformedMessage as e:
            result, problem = None, f"the worker's reply is malformed ({e})"
        if result is None:
            self.stop(kill=True)
            return _failure(ErrorType.CRASH, problem, len(inputs), time.monotonic() - start)
        return result

    def _decode(self, reply: tuple[int, bytes], job_id: int, num_inputs: int) -> ExecutionResult:
        """The ExecutionResult in a worker's RESULT message for this job; MalformedMessage else."""
        kind, payload = reply
        if kind != protocol.RESULT:
            raise protocol.MalformedMessage(f"message kind {kind} instead of RESULT")
        answered, outputs, code, message, stdout, duration = protocol.decode_result(payload, self._config.max_grid_side)
        if answered != job_id or len(outputs) != num_inputs:
            raise protocol.MalformedMessage(f"answer to job {answered} with {len(outputs)} outputs, expected job {job_id} with {num_inputs}")
        if code != protocol.NO_ERROR and code >= len(ErrorType.ALL):
            raise protocol.MalformedMessage(f"unknown error code {code}")
        error_type = None if code == protocol.NO_ERROR else ErrorType.ALL[code]
        if error_type is None and any(grid is None for grid in outputs):
            raise protocol.MalformedMessage("an output is missing but no error is given")
        outputs = tuple(None if grid is None else grid.astype(np.int64) for grid in outputs)
        return ExecutionResult(outputs, error_type, message, stdout, duration)

    def stop(self, kill: bool = False) -> None:
        """End the worker process: close its stdin, then kill it if it lingers (or at once)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if kill:
            process.kill()
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
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
        common_path = config.common_path or _DEFAULT_COMMON
        if not os.path.isfile(common_path):
            raise FileNotFoundError(f"the DSL file {common_path} does not exist (ExecutionConfig.common_path)")
        self.config = config
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._slots = [_Slot(os.path.abspath(common_path), config) for _ in range(config.num_workers or os.cpu_count())]
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
