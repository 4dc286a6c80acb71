"""A warm worker process: a template that forks one sandboxed process per program.

ExecutionPool starts this file as a script, one process per pool slot, with one end of a
SOCK_SEQPACKET socket (its descriptor number is the only argument). The worker imports
numpy, scipy and the DSL (as module `common`) once, then serves RUN messages, one at a time:

1. fork the program's process on the descriptor that came with RUN: one end of a socket
   the pool made for this job alone. The child enters a new session, gives up root (a uid
   of its own per pool slot) if the worker has it, becomes non-dumpable, gets resource
   limits (address space, CPU time, at most `max_threads` tasks), reads its job (code and
   input grids) from the socket, installs the allowlist seccomp filter (seccomp.py: it can
   open no file at all), seeds `random` and `np.random` with 0, runs the program on each
   input and writes its result frames back on the same socket;
2. watch the child: its CPU time (all threads) against `timeout_s`, the wall clock against
   `wall_timeout_s` (for programs that sleep or block), or its end;
3. SIGKILL the child's process group (always), reap it, and send ENDED (how it ended, wait
   status, CPU and wall seconds) to the pool.

The worker never reads a job's code, inputs, outputs or printed text: the pool and the
program's process talk directly. So a program's address space, a copy of the worker's,
holds nothing of any earlier job. Because every program runs in a fresh fork, nothing it
changes (numpy functions, `Color`, builtins, the recursion limit) reaches the next program,
and since it can create no file, directory or IPC object, nothing it does outlives it.
The worker and its programs are the kernel's first choice when memory runs out
(oom_score_adj 1000), never the trainer.

Messages are protocol.py's binary framing (no pickle). If the worker cannot fork, it
answers that job NOT_STARTED and exits, and the pool starts a fresh one.
"""

import builtins
import gc
import io
import importlib
import importlib.util
import math
import os
import random
import resource
import select
import signal
import socket
import sys
import time
import typing

import numpy as np

# A program's process cannot open files, so the modules it may import are imported here,
# once: the standard modules programs use, numpy's submodules, and what the DSL imports
# inside its functions. Any other import fails in the program with ModuleNotFoundError.
PRELOADED = (
    "abc", "array", "bisect", "collections", "collections.abc", "colorsys", "copy", "dataclasses",
    "decimal", "enum", "fractions", "functools", "heapq", "itertools", "json", "math", "numbers",
    "operator", "queue", "random", "re", "statistics", "string", "struct", "textwrap", "threading",
    "time", "types", "typing", "unicodedata", "warnings",
    "numpy", "numpy.fft", "numpy.linalg", "numpy.ma", "numpy.polynomial", "numpy.random",
    "scipy", "scipy.ndimage",
)
for _module in PRELOADED:
    importlib.import_module(_module)

# This file runs as a script, so its directory is sys.path[0]: import the
# siblings from there, then hide them from the programs.
import config
import protocol
import seccomp
import validation

del sys.path[0]
for _name in ("config", "protocol", "seccomp", "validation"):
    del sys.modules[_name]

ErrorType = config.ErrorType
_CODES = {name: code for code, name in enumerate(ErrorType.ALL)}
_JOB_FD = 3  # the child's end of its job's socket: the job comes in, result frames go out


# ------------------------------------------------------------------ in the child


class _Capture(io.TextIOBase):
    """A text sink that keeps the first `max_chars` characters written to it."""

    def __init__(self, max_chars: int):
        self._parts = []
        self._room = max_chars
        self._dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        kept = text[: max(self._room, 0)]
        self._parts.append(kept)
        self._room -= len(kept)
        self._dropped += len(text) - len(kept)
        return len(text)

    def text(self) -> str:
        note = f"... [truncated {self._dropped} chars]" if self._dropped else ""
        return "".join(self._parts) + note


def _refuse_process_creation(*args, **kwargs):
    raise PermissionError("creating processes is not allowed in the sandbox")


def _describe(error: BaseException) -> str:
    try:
        text = str(error)
    except BaseException:
        text = "<unprintable>"
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _error_type(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return ErrorType.EXIT
    if isinstance(error, MemoryError):
        return ErrorType.MEMORY
    return ErrorType.EXCEPTION


def _send(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(_JOB_FD, view):]


_BUILTINS = dict(vars(builtins))  # the pristine builtins, restored after the program's code runs


def _restore_builtins() -> None:
    """Undo changes the program made to `builtins`, which the code sending its results relies on."""
    current = vars(builtins)
    if current != _BUILTINS:
        current.clear()
        current.update(_BUILTINS)


def _seed() -> None:
    random.seed(0)
    np.random.seed(0)


def _run_program(code: str, inputs: list, settings: dict, program_globals: dict) -> None:
    """Run `code` on each input, sending one frame per input (or one program error)."""
    max_chars = settings["max_output_chars"]

    def send_error(kind: int, error_type: str, message: str, index: int = 0) -> None:
        _send(protocol.text_frame(kind, _CODES[error_type], index, message, max_chars))

    _seed()
    try:
        compiled = compile(code, "<program>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
        return send_error(protocol.PROGRAM_ERROR, ErrorType.SYNTAX, _describe(e))
    namespace = {"__name__": "__program__", "__builtins__": builtins, **program_globals}
    try:
        exec(compiled, namespace)
    except BaseException as e:
        return send_error(protocol.PROGRAM_ERROR, _error_type(e), _describe(e))
    finally:
        _restore_builtins()
    function = next((namespace[name] for name in (settings["entry_point"], "main") if callable(namespace.get(name))), None)
    if function is None:
        message = f"the program defines no function {settings['entry_point']!r} (nor 'main')"
        return send_error(protocol.PROGRAM_ERROR, ErrorType.NO_ENTRY_POINT, message)

    for index, grid in enumerate(inputs):
        _seed()
        try:
            value = function(grid.copy())
        except BaseException as e:
            send_error(protocol.INPUT_ERROR, _error_type(e), f"input {index}: {_describe(e)}", index)
            continue
        finally:
            _restore_builtins()
        try:
            output = validation.validate_output(value, settings["max_grid_side"])
        except BaseException as e:  # InvalidOutputError, or a hostile object's __len__ etc.
            send_error(protocol.INPUT_ERROR, ErrorType.INVALID_OUTPUT, f"input {index}: {_describe(e)}", index)
            continue
        rows, cols = output.shape
        _send(protocol.frame(protocol.OUTPUT, index=index, rows=rows, cols=cols, payload=output.astype(np.uint8).tobytes()))


def _enter_sandbox(worker: "Worker", job_fd: int) -> _Capture:
    """Confine this (child) process, all but the seccomp filter, which goes on once the job
    is read; return the sink that now receives its stdout/stderr."""
    settings = worker.settings
    os.setsid()  # own session and process group: the worker kills the whole group
    parent = os.getppid()
    worker.sandbox.drop_privileges(settings["uid"])  # before the death signal, which a change of uid clears
    worker.sandbox.set_dumpable(False)
    worker.sandbox.die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    os.chdir("/")
    os.dup2(worker.null_fd, 0)
    os.dup2(worker.null_fd, 1)
    os.dup2(worker.null_fd, 2)
    if job_fd != _JOB_FD:
        os.dup2(job_fd, _JOB_FD)
    os.closerange(_JOB_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    memory = settings["memory_limit_mb"] * 2**20
    cpu = math.ceil(settings["timeout_s"]) + 1  # a backstop: the worker stops it at timeout_s
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    # Tasks (threads) of this uid. With a uid per pool slot that is this process alone; a
    # user that cannot change uid shares its count with everything else it runs, so its
    # programs get no threads at all.
    tasks = settings["max_threads"] if settings["uid"] >= 0 else 0
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))
    capture = _Capture(settings["max_output_chars"])
    sys.stdout = sys.stderr = capture
    os.system = _refuse_process_creation  # it would only report a failed spawn as exit status 127
    return capture


def _child_main(worker: "Worker", job_fd: int) -> None:
    capture = _enter_sandbox(worker, job_fd)
    message = protocol.read_message(_JOB_FD)
    if message is None or message[0] != protocol.JOB:
        return
    _, code, inputs = protocol.decode_job(message[1])
    worker.sandbox.install(os.getpid())
    _run_program(code, inputs, worker.settings, worker.program_globals)
    _send(protocol.frame(protocol.STDOUT, payload=capture.text().encode("utf-8", "replace")))
    _send(protocol.frame(protocol.DONE))


# ------------------------------------------------------------------ in the worker


def _cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU time, all its threads (Linux: MAKE_PROCESS_CPUCLOCK)."""
    return ((~pid) << 3) | 2


class Worker:
    """Forks, watches and reaps one program's process per RUN."""

    def __init__(self, settings: dict, program_globals: dict, null_fd: int):
        self.settings = settings
        self.program_globals = program_globals
        self.null_fd = null_fd
        self.sandbox = seccomp.Sandbox()

    def run(self, job_fd: int) -> tuple[int, int, float, float]:
        """(how it ended, wait status, CPU seconds, wall seconds) of one program.

        Raises OSError when the process cannot be forked (after closing `job_fd`).
        """
        start = time.monotonic()
        try:
            pid = os.fork()
        except OSError:
            os.close(job_fd)
            raise
        if pid == 0:
            try:
                _child_main(self, job_fd)
            finally:
                os._exit(0)
        os.close(job_fd)
        try:
            how = self._watch(pid, start)
        finally:
            _kill_group(pid)
            _, status, usage = os.wait4(pid, 0)
        return how, status, usage.ru_utime + usage.ru_stime, time.monotonic() - start

    def _watch(self, pid: int, start: float) -> int:
        """Wait for the process to end; kill it at the CPU or wall limit. Returns how it ended."""
        cpu_limit, wall_limit = self.settings["timeout_s"], self.settings["wall_timeout_s"]
        clock = _cpu_clock(pid)
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while True:
                try:
                    cpu = time.clock_gettime(clock)
                except OSError:  # already gone
                    return protocol.EXITED
                wall = time.monotonic() - start
                if cpu >= cpu_limit:
                    return protocol.CPU_LIMIT
                if wall >= wall_limit:
                    return protocol.WALL_LIMIT
                # One thread's CPU time grows no faster than the wall clock; a few threads'
                # can, so look again at least every 50 ms.
                wait = min(cpu_limit - cpu, wall_limit - wall, 0.05)
                if poller.poll(max(wait, 0.001) * 1000):
                    return protocol.EXITED
        finally:
            os.close(pidfd)


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):  # the group, or the child if setsid had not run yet
        try:
            kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _load_common(path: str):
    """Import the DSL file at `path` as the module `common`."""
    spec = importlib.util.spec_from_file_location("common", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["common"] = module
    spec.loader.exec_module(module)
    return module


def _program_globals(common) -> dict:
    """Names every program sees without importing: typing's, the DSL's star-exports, np, random."""
    names = {name: getattr(typing, name) for name in typing.__all__}
    exported = getattr(common, "__all__", [name for name in vars(common) if not name.startswith("_")])
    names.update({name: getattr(common, name) for name in exported})
    names.update(np=np, numpy=np, random=random)
    return names




def _sacrifice_first() -> None:
    """Make this process, and so every program forked from it, the OOM killer's first choice."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    null_fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(null_fd, 0)
    os.dup2(null_fd, 1)  # stray writes (warnings, a DSL's prints) go nowhere
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when workers stop

    def fail(message: str) -> None:
        protocol.send_packet(control, protocol.FAILED, message.encode("utf-8", "replace"))

    try:
        message = protocol.receive_packet(control)
        if message is None or message[0] != protocol.SETUP or message[2]:
            return fail("the first message is not SETUP")
        common_path, settings = protocol.decode_setup(message[1], protocol.SETTINGS)
        _sacrifice_first()  # before becoming non-dumpable, which makes /proc/self root's
        seccomp.Sandbox().set_dumpable(False)
        program_globals = _program_globals(_load_common(common_path))
    except BaseException as e:
        return fail(f"cannot set up the worker: {_describe(e)}")
    worker = Worker(settings, program_globals, null_fd)
    protocol.send_packet(control, protocol.READY, os.getpid().to_bytes(4, "little"))
    gc.freeze()  # keep the collector from touching (and so copying) the warm heap in every child
    while (message := protocol.receive_packet(control)) is not None:
        kind, payload, fds = message
        if kind != protocol.RUN or len(fds) != 1:
            raise protocol.MalformedMessage(f"message kind {kind} with {len(fds)} descriptors instead of RUN")
        job_id = protocol.decode_run(payload)
        try:
            ended = worker.run(fds[0])
        except OSError as e:  # no process could be forked: answer, then make way for a fresh worker
            protocol.send_packet(control, protocol.ENDED, protocol.encode_ended(
                job_id, protocol.NOT_STARTED, 0, 0.0, 0.0, f"the program's process could not start: {_describe(e)}"))
            return
        protocol.send_packet(control, protocol.ENDED, protocol.encode_ended(job_id, *ended, ""))


if __name__ == "__main__":
    main()
