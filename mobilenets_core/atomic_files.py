"""Files written whole or not at all: a crash, a kill -9 or a full disk mid-write leaves the previous
version (or nothing) under the final name, never half a file.

Everything the project writes outside a checkpoint (metrics.jsonl when it is rewritten, dataset.json,
weight files, predictions, export files and directories) goes through `staged`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil


def _sibling(path: str, kind: str) -> str:
    """`.<stem>.<kind>-<pid><ext>` beside `path`: hidden, one per process, and with `path`'s extension,
    because some writers insist on theirs (MindSpore's exporters append .mindir / .onnx when it is missing)."""
    directory, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(directory, f".{stem}.{kind}-{os.getpid()}{ext}")


def _remove(path: str) -> None:
    """Delete a file or directory if it is there; never raises, so it cannot hide the error being cleaned up after."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_directory(new: str, path: str) -> None:
    """Swap directory `new` in for `path`; an existing directory is moved aside first and deleted only
    once `new` is in place (os.replace cannot overwrite a non-empty directory)."""
    if not os.path.isdir(path) or os.path.islink(path):
        os.replace(new, path)
        return
    old = _sibling(path, "old")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def staged(path: str):
    """Yield a temporary path beside `path` (same directory, so the rename is atomic) for the block to write
    a file or a directory to. When the block succeeds it is flushed to disk (files) and renamed onto `path`;
    when it raises it is removed and the exception goes on."""
    path = os.fspath(path)
    tmp = _sibling(path, "tmp")
    _remove(tmp)  # left by an earlier process that had this pid
    try:
        yield tmp
        if os.path.isdir(tmp):
            _replace_directory(tmp, path)
        elif os.path.isfile(tmp):
            _fsync(tmp)
            os.replace(tmp, path)
        else:
            raise FileNotFoundError(f"nothing was written to {tmp}, the staging path of {path}; "
                                    f"the writer must create exactly that file or directory")
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with staged(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with staged(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj, indent: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=indent))
