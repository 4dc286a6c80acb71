"""Reading and writing the safetensors format one tensor at a time.

Layout: an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
raw row-major little-endian bytes (offsets are relative to the end of the header).

Why not the `safetensors` package: its numpy API has no bfloat16 (the dtype of every Llama
checkpoint), and its flax API puts each tensor on the default device before we could shard it.
Reading the format directly takes each tensor from the file to the host and then straight to
its shards, one tensor at a time.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from arc_jax.errors import UserError

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsError(UserError, ValueError):
    """A safetensors file is missing, truncated or malformed."""


class SafetensorsReader:
    """Open file whose tensors are read one by one, in file order, on request."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise SafetensorsError(f"{self.path}: file not found")
        self._file = open(self.path, "rb")
        try:
            (size,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(size))
        except (struct.error, ValueError) as e:
            self._file.close()
            raise SafetensorsError(f"{self.path}: unreadable safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + size
        self.entries = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        if entry["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype "
                                   f"{entry['dtype']}")
        begin, end = entry["data_offsets"]
        self._file.seek(self._data_start + begin)
        data = self._file.read(end - begin)
        if len(data) != end - begin:
            raise SafetensorsError(f"{self.path}: tensor {name!r} is truncated")
        return np.frombuffer(data, _DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_safetensors(path: str | os.PathLike, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                      arrays: Iterable[np.ndarray]):
    """Writes tensors described by `specs` (name, shape, dtype), taking their data from `arrays`
    one at a time in the same order, so only one tensor need exist in host memory."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        arrays = iter(arrays)
        for name, shape, dtype in specs:
            array = next(arrays)
            if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(f"{path}: tensor {name!r} is {array.dtype}{list(array.shape)}, "
                                 f"declared {np.dtype(dtype)}{list(shape)}")
            f.write(np.ascontiguousarray(array).tobytes())

