"""The Open Inference Protocol's tensors, as both its transports carry them.

One request, whatever the wire: a model view, an id, named input tensors (numpy arrays, or lists of bytes for
BYTES), the outputs asked for. REST (JSON, or JSON plus Triton's binary tensor extension) and gRPC (raw
contents) decode into these and encode from them; nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import OpticError

# v2 datatype <-> numpy. BYTES is a list of bytes objects (each element length-prefixed on the wire).
NUMPY_OF: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF = {dtype: name for name, dtype in NUMPY_OF.items()}
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class BadTensor(OpticError):
    """A request the protocol cannot take: wrong name, datatype, shape or byte size (400, INVALID_ARGUMENT)."""

    reason = "invalid_tensor"
    status_code = 400


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Wanted:
    """An output the request names: binary or JSON (REST), and Triton's classification extension."""

    name: str
    binary: bool | None = None  # None: the request's default
    class_count: int = 0


@dataclass
class InferRequest:
    model: str
    version: str
    id: str | None
    inputs: list[Tensor]
    outputs: list[Wanted] | None  # None: every output
    binary_output: bool = False  # REST: parameters.binary_data_output


@dataclass
class InferResult:
    model: str
    version: str
    id: str | None
    outputs: list[Tensor]
    binary: dict[str, bool] = field(default_factory=dict)  # REST: which outputs travel as binary


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadTensor(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise BadTensor(f"input {name!r}: shape {shape} has a negative dimension")
    return shape


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray | list[bytes]:
    """A tensor from its raw little-endian bytes (Triton's binary extension, gRPC's raw contents)."""
    if datatype == "BYTES":
        items = split_bytes(name, raw)
        if len(items) != element_count(shape):
            raise BadTensor(f"input {name!r}: {len(items)} BYTES elements for shape {shape}")
        return items
    dtype = NUMPY_OF.get(datatype)
    if dtype is None:
        raise BadTensor(f"input {name!r}: unknown datatype {datatype!r}")
    expected = element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadTensor(
            f"input {name!r}: {len(raw)} bytes of data, but {datatype} {shape} needs {expected}",
            reason="invalid_byte_size",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray | list[bytes]:
    """A tensor from JSON `data`: a flat (or nested, row-major) list; BYTES elements are strings."""
    flat = _flatten(data)
    if len(flat) != element_count(shape):
        raise BadTensor(f"input {name!r}: {len(flat)} elements in data for shape {shape}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise BadTensor(f"input {name!r}: BYTES data must be strings")
        return [v.encode("utf-8", "surrogateescape") for v in flat]
    dtype = NUMPY_OF.get(datatype)
    if dtype is None:
        raise BadTensor(f"input {name!r}: unknown datatype {datatype!r}")
    if not all(isinstance(v, (int, float, bool)) for v in flat):
        raise BadTensor(f"input {name!r}: {datatype} data must be numbers")
    values = np.asarray(flat)
    if dtype.kind in "ui" and values.size:
        info = np.iinfo(dtype)
        if values.dtype.kind not in "iub" or values.min() < info.min or values.max() > info.max:
            raise BadTensor(f"input {name!r}: {datatype} data must be integers in [{info.min}, {info.max}]")
    return values.astype(dtype).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadTensor("tensor data must be a list")
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for row in data:
        flat.extend(_flatten(row))
    return flat


def split_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadTensor(f"input {name!r}: BYTES data ends inside an element's length", reason="invalid_byte_size")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadTensor(
                f"input {name!r}: a BYTES element runs past the end of the data", reason="invalid_byte_size"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def to_raw(tensor: Tensor) -> bytes:
    if isinstance(tensor.data, list):
        return join_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data).tobytes()


def to_json_data(tensor: Tensor) -> list[Any]:
    if isinstance(tensor.data, list):
        return [item.decode("utf-8", "replace") for item in tensor.data]
    return tensor.data.reshape(-1).tolist()


def output_tensor(name: str, array: np.ndarray) -> Tensor:
    datatype = DATATYPE_OF.get(array.dtype)
    if datatype is None:  # a graph output of an exotic type: sent as the nearest v2 type
        array = array.astype(np.float32)
        datatype = "FP32"
    return Tensor(name, datatype, list(array.shape), array)


def classification(name: str, scores: np.ndarray, count: int, labels: list[str]) -> Tensor:
    """Triton's classification extension: the top `count` per row as "score:index:label" (BYTES)."""
    flat = scores.reshape(len(scores), -1)
    count = min(count, flat.shape[1])
    top = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    items = []
    for row, indices in zip(flat, top, strict=True):
        for i in indices:
            label = labels[i] if i < len(labels) else ""
            items.append(f"{row[i]:f}:{i}:{label}".encode() if label else f"{row[i]:f}:{i}".encode())
    return Tensor(name, "BYTES", [len(flat), count], items)
