"""MindSpore .ckpt files read and written without MindSpore (the format is a small protobuf).

    message Checkpoint { repeated Value value = 1; }
    message Value      { string tag = 1; TensorProto tensor = 2; }
    message TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

This lets either engine, and the converter, read and write MindSpore checkpoints; the names
inside are MindSpore parameter names (for our networks: canonical names with BatchNorm's
gamma / beta / moving_mean / moving_variance, see `to_canonical`).
"""
from __future__ import annotations

import os

import numpy as np

from mobilenets_core import atomic_files

_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Float64": np.float64, "Int8": np.int8, "Int16": np.int16,
           "Int32": np.int32, "Int64": np.int64, "UInt8": np.uint8, "Bool": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
# MindSpore BatchNorm parameter -> canonical BatchNorm leaf
BN_NAMES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}


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


def to_canonical(tensors: dict, canonical_names) -> dict:
    """The canonical tensors among MindSpore parameters (optimizer state and the like are left out)."""
    wanted = set(canonical_names)
    state = {}
    for name, value in tensors.items():
        head, _, leaf = name.rpartition(".")
        canonical = f"{head}.{BN_NAMES[leaf]}" if head.endswith(".bn") and leaf in BN_NAMES else name
        if canonical in wanted:
            state[canonical] = np.asarray(value, dtype=np.float32)
    return state


def from_canonical(state: dict) -> dict:
    """Canonical tensors -> MindSpore parameter names."""
    reverse = {v: k for k, v in BN_NAMES.items()}
    out = {}
    for name, value in state.items():
        head, _, leaf = name.rpartition(".")
        out[f"{head}.{reverse[leaf]}" if head.endswith(".bn") else name] = np.asarray(value, np.float32)
    return out
