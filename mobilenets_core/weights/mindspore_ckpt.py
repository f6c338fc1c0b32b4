"""MindSpore .ckpt files read and written without MindSpore (the format is a small protobuf).

    message Checkpoint { repeated Value value = 1; }
    message Value      { string tag = 1; TensorProto tensor = 2; }
    message TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

This lets either engine, and the converter, read and write MindSpore checkpoints (a spoke of
the canonical hub). The names inside are MindSpore parameter names: for our networks, the
canonical names with BatchNorm's gamma / beta / moving_mean / moving_variance (`canonical_name`),
plus `mobilenets.bn_eps`, the BatchNorm epsilon the weights were trained with, and
`mobilenets.convention`, the architecture convention they were trained as (ASCII bytes; absent: timm).
A mindcv checkpoint (mindcv's own names) is read through `mindcv.py`.
"""
from __future__ import annotations

import os

import numpy as np

from mobilenets_core import atomic_files
from mobilenets_core.weights.tensors import MINDSPORE_BATCHNORM

_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Float64": np.float64, "Int8": np.int8, "Int16": np.int16,
           "Int32": np.int32, "Int64": np.int64, "UInt8": np.uint8, "Bool": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
BN_EPS_TENSOR = "mobilenets.bn_eps"  # lets a reader evaluate the weights with the epsilon they were trained with
DEFAULT_BN_EPS = 1e-5  # MindSpore's, for a checkpoint written without BN_EPS_TENSOR
CONVENTION_TENSOR = "mobilenets.convention"  # specs.CONVENTIONS, as uint8 ASCII codes
_CANONICAL_LEAF = {ms_name: leaf for leaf, ms_name in MINDSPORE_BATCHNORM.items()}


def _varint(data: bytes, pos: int):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
            if pos > len(data):
                raise ValueError("truncated field")
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def read(path: str) -> dict:
    """name -> ndarray of every tensor in a MindSpore checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    tensors = {}
    try:
        for number, _, value in _fields(data):
            if number != 1:
                continue
            tag, tensor = None, None
            for n, _, v in _fields(value):
                if n == 1:
                    tag = v.decode()
                elif n == 2:
                    tensor = v
            dims, dtype, content = [], None, b""
            for n, wire, v in _fields(tensor or b""):
                if n == 1 and wire == 0:
                    dims.append(v)
                elif n == 1 and wire == 2:  # packed dims
                    pos = 0
                    while pos < len(v):
                        d, pos = _varint(v, pos)
                        dims.append(d)
                elif n == 2:
                    dtype = v.decode()
                elif n == 3:
                    content = v
            if dtype not in _DTYPES:
                raise ValueError(f"tensor {tag!r} has unsupported type {dtype!r}")
            tensors[tag] = np.frombuffer(content, dtype=_DTYPES[dtype]).reshape(dims).copy()
    except (IndexError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable MindSpore checkpoint ({e})") from e
    if not tensors:
        raise ValueError(f"{path} is not a MindSpore checkpoint (no tensors found)")
    return tensors


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _encode_varint(len(payload)) + payload


def write(path: str, tensors: dict) -> None:
    """Write name -> ndarray as a MindSpore checkpoint (atomically: temporary file, then rename)."""
    body = bytearray()
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        if array.dtype not in _NAMES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be stored in a MindSpore checkpoint")
        proto = b"".join(_key(1, 0) + _encode_varint(int(d)) for d in array.shape)
        proto += _bytes_field(2, _NAMES[array.dtype].encode()) + _bytes_field(3, array.tobytes())
        body += _bytes_field(1, _bytes_field(1, name.encode()) + _bytes_field(2, proto))
    atomic_files.write_bytes(path, bytes(body))


def canonical_name(parameter: str) -> str:
    """MindSpore parameter name -> canonical tensor name (BatchNorm leaves renamed, all else kept)."""
    head, _, leaf = parameter.rpartition(".")
    if (head.endswith(".bn") or head == "bn") and leaf in _CANONICAL_LEAF:
        return f"{head}.{_CANONICAL_LEAF[leaf]}"
    return parameter


def mindspore_name(name: str) -> str:
    """Canonical tensor name -> MindSpore parameter name."""
    head, _, leaf = name.rpartition(".")
    return f"{head}.{MINDSPORE_BATCHNORM[leaf]}" if head.endswith(".bn") else name


def to_canonical(tensors: dict, canonical_names) -> dict:
    """The canonical tensors among MindSpore parameters (optimizer state and the like are left out)."""
    wanted = set(canonical_names)
    return {canonical_name(name): np.asarray(value, dtype=np.float32) for name, value in tensors.items()
            if canonical_name(name) in wanted}


def trained_bn_eps(tensors: dict) -> float:
    """The BatchNorm epsilon recorded in a checkpoint (MindSpore's default when none is)."""
    value = tensors.get(BN_EPS_TENSOR)
    return float(np.asarray(value).reshape(-1)[0]) if value is not None else DEFAULT_BN_EPS


def trained_convention(tensors: dict) -> str:
    """The architecture convention recorded in a checkpoint ("timm" when none is: files before mindcv's)."""
    value = tensors.get(CONVENTION_TENSOR)
    return bytes(np.asarray(value, np.uint8).reshape(-1)).decode("ascii") if value is not None else "timm"


def convention_tensor(convention: str) -> np.ndarray:
    return np.frombuffer(convention.encode("ascii"), np.uint8).copy()


def from_canonical(state: dict, bn_eps: float | None = None, convention: str | None = None) -> dict:
    """Canonical tensors (and the epsilon and convention they were trained with) -> MindSpore parameter names."""
    out = {mindspore_name(name): np.asarray(value, np.float32) for name, value in state.items()}
    if bn_eps is not None:
        out[BN_EPS_TENSOR] = np.array([bn_eps], np.float32)
    if convention is not None:
        out[CONVENTION_TENSOR] = convention_tensor(convention)
    return out
