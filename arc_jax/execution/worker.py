"""A warm worker process: it forks one sandboxed child per program.

ExecutionPool starts this file as a script, one process per pool slot. The
worker imports numpy, scipy and the DSL (as module `common`) once, then serves
jobs read from stdin, one at a time:

1. fork a child: the child enters a new session, gives up root (uid/gid 65534) if the
   worker has it, becomes non-dumpable, gets resource limits, installs the allowlist
   seccomp filter (seccomp.py: it can open no file at all), seeds `random` and
   `np.random` with 0, and runs the program on each input;
2. read the child's result frames (protocol.py) until it is done, dies, or its
   wall-clock deadline passes;
3. SIGKILL the child's process group (always), reap it, and reply on stdout.

Because every program runs in a fresh fork, nothing it changes (numpy functions,
`Color`, builtins, the recursion limit) reaches the next program, and since it can
create no file, directory or IPC object, nothing it does outlives it.

Messages on stdin/stdout are protocol.py's binary framing (no pickle):
  pool -> worker: SETUP (DSL path, settings), then JOBs (job id, code, input grids)
  worker -> pool: READY (pid) or FAILED (message); then one RESULT per job.
A job that fails in the worker's own code is answered as a Crash; the worker goes on.
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
_RESULT_FD = 3  # the child's end of the result pipe


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
        view = view[os.write(_RESULT_FD, view):]


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


def _enter_sandbox(sandbox: seccomp.Sandbox, result_fd: int, null_fd: int, settings: dict) -> _Capture:
    """Confine this (child) process; return the sink that now receives its stdout/stderr."""
    os.setsid()  # own session and process group: the worker kills the whole group
    parent = os.getppid()
    sandbox.drop_privileges()  # before the death signal, which a change of uid clears
    sandbox.set_dumpable(False)
    sandbox.die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    os.chdir("/")
    os.dup2(null_fd, 0)
    os.dup2(null_fd, 1)
    os.dup2(null_fd, 2)
    if result_fd != _RESULT_FD:
        os.dup2(result_fd, _RESULT_FD)
    os.closerange(_RESULT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    memory = settings["memory_limit_mb"] * 2**20
    cpu = math.ceil(settings["timeout_s"]) + 1
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    sandbox.install(os.getpid())
    capture = _Capture(settings["max_output_chars"])
    sys.stdout = sys.stderr = capture
    os.system = _refuse_process_creation  # it would only report a failed spawn as exit status 127
    return capture


def _child_main(job: tuple, worker: "Worker", result_fd: int) -> None:
    _, code, inputs = job
    capture = _enter_sandbox(worker.sandbox, result_fd, worker.null_fd, worker.settings)
    _run_program(code, inputs, worker.settings, worker.program_globals)
    _send(protocol.frame(protocol.STDOUT, payload=capture.text().encode("utf-8", "replace")))
    _send(protocol.frame(protocol.DONE))


# ------------------------------------------------------------------ in the worker


class _Collector:
    """Assembles a job's result from the child's frames, checking each one."""

    def __init__(self, num_inputs: int, max_grid_side: int):
        self.outputs = [None] * num_inputs
        self.errors = {}  # input index -> (error type, message); -1 = the program as a whole
        self.stdout = ""
        self.done = False
        self._max_side = max_grid_side

    def add(self, kind: int, code: int, index: int, rows: int, cols: int, payload: bytes) -> None:
        if kind in (protocol.INPUT_ERROR, protocol.OUTPUT) and index >= len(self.outputs):
            raise protocol.MalformedFrame(f"input index {index} out of range")
        if kind == protocol.OUTPUT:
            if not (1 <= rows <= self._max_side and 1 <= cols <= self._max_side) or len(payload) != rows * cols:
                raise protocol.MalformedFrame(f"bad grid frame {rows}x{cols} with {len(payload)} bytes")
            if max(payload) > 9:
                raise protocol.MalformedFrame("grid value above 9")
            self.outputs[index] = np.frombuffer(payload, dtype=np.uint8).reshape(rows, cols)
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


def _collect(read_fd: int, deadline: float, collector: _Collector, max_payload: int) -> str | None:
    """Feed the child's frames to `collector` until done.

    Returns None when the child finished, "timeout" or "eof" when it did not;
    raises MalformedFrame for bytes that break the frame format.
    """
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    buffer = bytearray()
    while not collector.done:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return "timeout"
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            return "eof"
        buffer += chunk
        for frame in protocol.split_frames(buffer, max_payload):
            collector.add(*frame)
    return None


def _exited_before(pid: int, deadline: float) -> bool:
    """Wait until the process `pid` ends by itself, or `deadline` passes."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(deadline - time.monotonic(), 0) * 1000))
    finally:
        os.close(pidfd)


def _describe_death(status: int) -> tuple[str, str]:
    """Error type and message for a child that ended without finishing."""
    if os.WIFSIGNALED(status):
        signal_number = os.WTERMSIG(status)
        if signal_number == signal.SIGXCPU:
            return ErrorType.TIMEOUT, "the program used up its CPU-time limit"
        return ErrorType.CRASH, f"the program's process was killed by {signal.Signals(signal_number).name}"
    return ErrorType.EXIT, f"the program's process exited with status {os.WEXITSTATUS(status)} before sending its results"


class Worker:
    """Runs jobs, each in a fresh sandboxed child."""

    def __init__(self, settings: dict, program_globals: dict, null_fd: int):
        self.settings = settings
        self.program_globals = program_globals
        self.null_fd = null_fd
        self.sandbox = seccomp.Sandbox()
        # A frame's payload is a grid or a truncated text (up to 4 UTF-8 bytes a character, plus a note).
        self._max_payload = max(settings["max_grid_side"] ** 2, 4 * settings["max_output_chars"] + 200)

    def run(self, job: tuple) -> tuple:
        """(job_id, outputs, error type, message, stdout, seconds) of one job."""
        job_id, _, inputs = job
        read_fd, write_fd = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                _child_main(job, self, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        collector = _Collector(len(inputs), self.settings["max_grid_side"])
        deadline = start + self.settings["timeout_s"]
        malformed = None
        try:
            stopped = _collect(read_fd, deadline, collector, self._max_payload)
            if stopped == "eof" and not _exited_before(pid, deadline):
                stopped = "timeout"  # it closed its result pipe but kept running
        except protocol.MalformedFrame as e:
            stopped, malformed = "malformed", e
        finally:
            _kill_group(pid)
            _, status = os.waitpid(pid, 0)
            os.close(read_fd)
        duration = time.monotonic() - start

        error_type, message = collector.first_error()
        if stopped == "timeout":
            error_type, message = ErrorType.TIMEOUT, f"the program ran past its {self.settings['timeout_s']} s time limit and was killed"
        elif stopped == "eof":
            error_type, message = _describe_death(status)
        elif stopped == "malformed":
            error_type, message = ErrorType.CRASH, f"the program's process wrote bytes that are not a result: {malformed}"
        elif error_type is None and any(output is None for output in collector.outputs):
            error_type, message = ErrorType.CRASH, "the program's process finished without all outputs"
        return (job_id, tuple(collector.outputs), error_type, message, collector.stdout, duration)

    def answer(self, job: tuple) -> bytes:
        """The RESULT payload for `job`; an error in the worker's own code is this job's Crash."""
        try:
            job_id, outputs, error_type, message, stdout, duration = self.run(job)
        except Exception as e:  # noqa: BLE001 - whatever broke, only this job pays
            job_id, outputs, stdout, duration = job[0], (None,) * len(job[2]), "", 0.0
            error_type, message = ErrorType.CRASH, f"the worker failed to run the job: {_describe(e)}"
        code = protocol.NO_ERROR if error_type is None else _CODES[error_type]
        return protocol.encode_result(job_id, outputs, code, message, stdout, duration)


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




def _self_test(worker: Worker) -> str | None:
    """Run one trivial program through the full sandbox; return what went wrong, if anything."""
    grid = np.array([[1, 2], [3, 4]])
    _, outputs, error_type, message, _, _ = worker.run((0, f"def {worker.settings['entry_point']}(g):\n    return g[::-1]", [grid]))
    if error_type is not None or not np.array_equal(outputs[0], grid[::-1]):
        return f"the sandbox self-test failed: {error_type}: {message}"
    return None


def main() -> None:
    # Keep the pool's pipes on private descriptors; stray writes to fd 1 must not corrupt them.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null_fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(null_fd, 0)
    os.dup2(null_fd, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when workers stop

    def fail(message: str) -> None:
        protocol.write_message(proto_out, protocol.FAILED, message.encode("utf-8", "replace"))

    try:
        message = protocol.read_message(proto_in)
        if message is None or message[0] != protocol.SETUP:
            return fail("the first message is not SETUP")
        common_path, settings = protocol.decode_setup(message[1], protocol.SETTINGS)
        seccomp.Sandbox().set_dumpable(False)
        program_globals = _program_globals(_load_common(common_path))
    except BaseException as e:
        return fail(f"cannot set up the worker: {_describe(e)}")
    worker = Worker(settings, program_globals, null_fd)
    failure = _self_test(worker)
    if failure:
        return fail(failure)
    protocol.write_message(proto_out, protocol.READY, os.getpid().to_bytes(4, "little"))
    gc.freeze()  # keep the collector from touching (and so copying) the warm heap in every child
    while (message := protocol.read_message(proto_in)) is not None:
        if message[0] != protocol.JOB:
            raise protocol.MalformedMessage(f"message kind {message[0]} instead of JOB")
        job = protocol.decode_job(message[1])
        protocol.write_message(proto_out, protocol.RESULT, worker.answer(job))


if __name__ == "__main__":
    main()
