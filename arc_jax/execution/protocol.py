"""Wire formats between the pool, its workers and the programs' processes.

Pool <-> worker: length-prefixed pickles. Both ends are our code.

Program's process -> worker: fixed-size binary frames, never pickles, since the
program could write to the pipe itself and unpickling its bytes would run its
code in the worker. Each frame is a 12-byte header (kind, error code, input
index, rows, cols, payload length) and a payload: a grid as rows*cols bytes, or
UTF-8 text. The worker checks every field before use.

This module uses only the standard library: the worker imports it by file.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time

# ---------------------------------------------------------------- pool <-> worker

_LENGTH = struct.Struct("<Q")


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


def write_message(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int, deadline: float | None = None) -> object | None:
    """The next message from fd, or None if the other end closed it.

    With a deadline (time.monotonic() value), raises TimeoutError when it passes.
    """
    header = _read_exact(fd, _LENGTH.size, deadline)
    if header is None:
        return None
    data = _read_exact(fd, _LENGTH.unpack(header)[0], deadline)
    return None if data is None else pickle.loads(data)


# ---------------------------------------------------------------- program -> worker
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
