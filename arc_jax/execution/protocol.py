"""Wire formats between the pool, its workers and the programs' processes.

No pickle crosses a process boundary: a pickle is code, and a program that reached a pipe
could shape it. Every message is fixed binary framing, checked field by field before use;
bytes that break the format raise `MalformedMessage` / `MalformedFrame`, never run.

Pool <-> worker (a SOCK_SEQPACKET socket: one packet per message, a 5-byte header of kind
and payload length, then the payload). A worker never sees a job's code, inputs or results:
  SETUP   pool -> worker, once: JSON {"common_path": str, "settings": {...}}
  READY   worker -> pool: u32 pid;  FAILED: UTF-8 text
  RUN     pool -> worker: u64 job id, with one descriptor attached (SCM_RIGHTS): the
          program's end of the job's socket. The worker forks the program's process on it.
  ENDED   worker -> pool: u64 job id, u8 how it ended (EXITED, CPU_LIMIT, WALL_LIMIT,
          NOT_STARTED), i32 wait status, f64 CPU seconds, f64 wall seconds, text message

Pool <-> program's process (a stream socket made for that job alone):
  JOB     pool -> program, the same header: u64 job id, text code, u32 count, then per
          input grid: u16 rows, u16 cols, rows*cols little-endian int64
  frames  program -> pool: a 12-byte header (kind, error code, input index, rows, cols,
          payload length) and a payload: a grid as rows*cols bytes, or UTF-8 text.
(text = u32 byte length + UTF-8). Error codes are indices into config.ErrorType.ALL.

This module uses only the standard library and numpy: the worker imports it by file.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time

import numpy as np

# ---------------------------------------------------------------- pool <-> worker, pool -> program

SETUP, READY, FAILED, RUN, ENDED, JOB = 1, 2, 3, 4, 5, 6
# How a program's process ended (ENDED): by itself, or killed by the worker at a limit,
# or never, because it could not be started.
EXITED, CPU_LIMIT, WALL_LIMIT, NOT_STARTED = 0, 1, 2, 3
# The settings a worker gets in SETUP, with their types (checked on arrival).
SETTINGS = {"timeout_s": float, "wall_timeout_s": float, "memory_limit_mb": int, "entry_point": str,
            "max_grid_side": int, "max_output_chars": int, "uid": int, "max_threads": int}
MAX_MESSAGE_BYTES = 1 << 30
MAX_PACKET_BYTES = 1 << 16
_HEADER = struct.Struct("<BI")
_U8, _U32, _U64, _I32, _F64 = (struct.Struct(f) for f in ("<B", "<I", "<Q", "<i", "<d"))
_GRID_SHAPE = struct.Struct("<HH")


class MalformedMessage(ValueError):
    """Bytes between the pool and a worker that do not follow the message format."""


def _check_header(kind: int, length: int) -> None:
    if not SETUP <= kind <= JOB or length > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"bad message header kind={kind} length={length}")


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """Read exactly n bytes from fd; None on end of file; TimeoutError after `deadline` (monotonic)."""
    chunks = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError(f"no message within the deadline ({n} bytes missing)")
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def message(kind: int, payload: bytes) -> bytes:
    """A message's bytes: header and payload."""
    return _HEADER.pack(kind, len(payload)) + payload


def write_message(fd: int, kind: int, payload: bytes) -> None:
    """A message on a stream."""
    view = memoryview(message(kind, payload))
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int, deadline: float | None = None) -> tuple[int, bytes] | None:
    """The next (kind, payload) from a stream fd, or None if the other end closed it.

    With a deadline (time.monotonic() value), raises TimeoutError when it passes.
    """
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    kind, length = _HEADER.unpack(header)
    _check_header(kind, length)
    payload = _read_exact(fd, length, deadline)
    return None if payload is None else (kind, payload)


def send_packet(sock: socket.socket, kind: int, payload: bytes, fds: tuple[int, ...] = ()) -> None:
    """One message as one packet on the pool <-> worker socket, with descriptors if any."""
    data = message(kind, payload)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def receive_packet(sock: socket.socket, deadline: float | None = None) -> tuple[int, bytes, list[int]] | None:
    """The next (kind, payload, descriptors) on the pool <-> worker socket; None once it
    is closed; TimeoutError after `deadline`. Descriptors not asked for are closed."""
    sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
    try:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_PACKET_BYTES, 1)
    except socket.timeout:
        raise TimeoutError("no message within the deadline") from None
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise MalformedMessage(f"a packet of {len(data)} bytes is cut or too short")
    kind, length = _HEADER.unpack_from(data)
    _check_header(kind, length)
    if length != len(data) - _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise MalformedMessage(f"a packet says {length} bytes and holds {len(data) - _HEADER.size}")
    return kind, data[_HEADER.size:], fds


class _Writer:
    def __init__(self):
        self.parts: list[bytes] = []

    def put(self, fmt: struct.Struct, *values) -> _Writer:
        self.parts.append(fmt.pack(*values))
        return self

    def text(self, value: str) -> _Writer:
        data = value.encode("utf-8", "surrogatepass")
        self.parts += [_U32.pack(len(data)), data]
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    """Reads fields off a payload; any short read or leftover byte is a MalformedMessage."""

    def __init__(self, payload: bytes, what: str):
        self._data, self._at, self._what = memoryview(payload), 0, what

    def take(self, n: int) -> memoryview:
        if n > len(self._data) - self._at:
            raise MalformedMessage(f"{self._what} message ends early")
        self._at += n
        return self._data[self._at - n:self._at]

    def get(self, fmt: struct.Struct):
        return fmt.unpack(self.take(fmt.size))[0]

    def text(self) -> str:
        try:
            return bytes(self.take(self.get(_U32))).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as e:
            raise MalformedMessage(f"{self._what} message holds bad text: {e}") from None

    def grid_shape(self, max_side: int) -> tuple[int, int]:
        rows, cols = _GRID_SHAPE.unpack(self.take(_GRID_SHAPE.size))
        if not (1 <= rows <= max_side and 1 <= cols <= max_side):
            raise MalformedMessage(f"{self._what} message has a {rows}x{cols} grid")
        return rows, cols

    def end(self) -> None:
        if self._at != len(self._data):
            raise MalformedMessage(f"{self._what} message has {len(self._data) - self._at} extra bytes")


def encode_setup(common_path: str, settings: dict) -> bytes:
    return json.dumps({"common_path": common_path, "settings": settings}).encode()


def decode_setup(payload: bytes, fields: dict[str, type]) -> tuple[str, dict]:
    """(common_path, settings); every field of `fields` present with its type, no other."""
    try:
        message = json.loads(payload)
        common_path, settings = message["common_path"], message["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise MalformedMessage(f"bad setup message: {e}") from None
    if not isinstance(common_path, str) or not isinstance(settings, dict) or set(settings) != set(fields):
        raise MalformedMessage(f"bad setup message: expected settings {sorted(fields)}")
    for name, kind in fields.items():
        if not isinstance(settings[name], kind) or isinstance(settings[name], bool):
            raise MalformedMessage(f"bad setup message: {name} is not {kind}")
    return common_path, settings


def encode_job(job_id: int, code: str, inputs: list[np.ndarray]) -> bytes:
    out = _Writer().put(_U64, job_id).text(code).put(_U32, len(inputs))
    for grid in inputs:
        out.put(_GRID_SHAPE, *grid.shape).parts.append(np.ascontiguousarray(grid, "<i8").tobytes())
    return out.bytes()


def decode_job(payload: bytes, max_side: int = 65535) -> tuple[int, str, list[np.ndarray]]:
    read = _Reader(payload, "job")
    job_id, code, count = read.get(_U64), read.text(), read.get(_U32)
    inputs = []
    for _ in range(count):
        rows, cols = read.grid_shape(max_side)
        inputs.append(np.frombuffer(read.take(8 * rows * cols), "<i8").reshape(rows, cols).copy())
    read.end()
    return job_id, code, inputs


def encode_ended(job_id: int, how: int, status: int, cpu_s: float, wall_s: float, message: str) -> bytes:
    return (_Writer().put(_U64, job_id).put(_U8, how).put(_I32, status).put(_F64, cpu_s)
            .put(_F64, wall_s).text(message).bytes())


def decode_ended(payload: bytes) -> tuple[int, int, int, float, float, str]:
    """(job id, how, wait status, CPU seconds, wall seconds, message) of an ENDED message."""
    read = _Reader(payload, "ended")
    job_id, how, status = read.get(_U64), read.get(_U8), read.get(_I32)
    cpu_s, wall_s, message = read.get(_F64), read.get(_F64), read.text()
    read.end()
    if how > NOT_STARTED:
        raise MalformedMessage(f"ended message has an unknown end {how}")
    return job_id, how, status, cpu_s, wall_s, message


def encode_run(job_id: int) -> bytes:
    return _U64.pack(job_id)


def decode_run(payload: bytes) -> int:
    read = _Reader(payload, "run")
    job_id = read.get(_U64)
    read.end()
    return job_id


# ---------------------------------------------------------------- program -> pool
# Error codes in frames are indices into config.ErrorType.ALL.

HEADER = struct.Struct("<BBHHHI")  # kind, error code, input index, rows, cols, payload length

OUTPUT = 0  # a valid grid for input `index`
INPUT_ERROR = 1  # input `index` failed; payload is the message
PROGRAM_ERROR = 2  # the program failed before any input ran; payload is the message
STDOUT = 3  # captured output text
DONE = 4  # the program's process finished normally


def frame(kind: int, *, code: int = 0, index: int = 0, rows: int = 0, cols: int = 0, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, code, index, rows, cols, len(payload)) + payload


def text_frame(kind: int, code: int, index: int, text: str, max_chars: int) -> bytes:
    return frame(kind, code=code, index=index, payload=truncate(text, max_chars).encode("utf-8", "replace"))


def truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"... [truncated {len(text) - max_chars} chars]"


class MalformedFrame(ValueError):
    """Bytes from a program's process that do not follow the frame format."""


def split_frames(buffer: bytearray, max_payload: int) -> list[tuple[int, int, int, int, int, bytes]]:
    """Remove and return the complete frames at the start of `buffer`.

    Each frame is (kind, code, index, rows, cols, payload). Raises MalformedFrame
    for an unknown kind or a payload longer than max_payload.
    """
    frames = []
    while len(buffer) >= HEADER.size:
        kind, code, index, rows, cols, length = HEADER.unpack_from(buffer)
        if kind > DONE or length > max_payload:
            raise MalformedFrame(f"bad frame header kind={kind} length={length}")
        end = HEADER.size + length
        if len(buffer) < end:
            break
        frames.append((kind, code, index, rows, cols, bytes(buffer[HEADER.size:end])))
        del buffer[:end]
    return frames
