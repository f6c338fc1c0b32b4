"""mobilenets_core.atomic_files: a target gets the whole new content or keeps its old one, and no
temporary file or directory is left beside it either way."""
import json
import os
import pathlib

import pytest

from mobilenets_core import atomic_files


def test_write_text_bytes_and_json_land_under_the_target_name_only(tmp_path):
    atomic_files.write_text(tmp_path / "a.txt", "ünïcode\nline 2\n")
    atomic_files.write_bytes(str(tmp_path / "b.bin"), b"\x00\xff" * 1000)
    atomic_files.write_json(str(tmp_path / "c.json"), {"x": [1, 2.5, None]}, indent=2)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "ünïcode\nline 2\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff" * 1000
    assert (tmp_path / "c.json").read_text() == json.dumps({"x": [1, 2.5, None]}, indent=2)
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.json"]


def test_replacing_a_file_keeps_no_trace_of_the_old_content(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old" * 100)
    atomic_files.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["weights.safetensors"]


def test_staged_path_is_hidden_beside_the_target_and_keeps_its_extension(tmp_path):
    target = str(tmp_path / "model.mindir")
    with atomic_files.staged(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp) == f".model.tmp-{os.getpid()}.mindir"  # MindSpore would append a missing .mindir
        with open(tmp, "wb") as f:
            f.write(b"graph")
        assert not os.path.exists(target)  # nothing under the final name until the writer is done
    with open(target, "rb") as f:
        assert f.read() == b"graph"


def test_a_failure_mid_write_leaves_the_old_file_byte_identical_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.jsonl"
    old = b'{"step": 1}\n{"step": 2}\n'
    target.write_bytes(old)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_files.staged(str(target)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b'{"step": 1}\n{"st')
            raise RuntimeError("disk full")
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_writer_that_writes_nothing_is_an_error_and_the_target_stays(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="nothing was written to .*model.tmp-.*staging path of"):
        with atomic_files.staged(str(target)):
            pass
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def _write_tree(root, files: dict) -> None:
    os.makedirs(os.path.join(root, "variables"))
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)


def _read_tree(root) -> dict:
    return {os.path.relpath(os.path.join(d, n), root): pathlib.Path(d, n).read_bytes()
            for d, _, names in os.walk(root) for n in names}


def test_a_directory_target_is_created_then_replaced_whole(tmp_path):
    target = str(tmp_path / "saved_model")
    with atomic_files.staged(target) as tmp:
        _write_tree(tmp, {"saved_model.pb": b"v1", "variables/data": b"w1", "variables/only_in_v1": b"x"})
    assert _read_tree(target) == {"saved_model.pb": b"v1", "variables/data": b"w1", "variables/only_in_v1": b"x"}
    with atomic_files.staged(target) as tmp:
        _write_tree(tmp, {"saved_model.pb": b"v2", "variables/data": b"w2"})
    assert _read_tree(target) == {"saved_model.pb": b"v2", "variables/data": b"w2"}  # nothing of v1 survives
    assert os.listdir(tmp_path) == ["saved_model"]


def test_a_failed_directory_write_leaves_the_old_directory_and_no_temporary(tmp_path):
    target = str(tmp_path / "saved_model")
    with atomic_files.staged(target) as tmp:
        _write_tree(tmp, {"saved_model.pb": b"v1", "variables/data": b"w1"})
    with pytest.raises(ValueError, match="conversion failed"):
        with atomic_files.staged(target) as tmp:
            _write_tree(tmp, {"saved_model.pb": b"v2-half"})
            raise ValueError("conversion failed")
    assert _read_tree(target) == {"saved_model.pb": b"v1", "variables/data": b"w1"}
    assert os.listdir(tmp_path) == ["saved_model"]


def test_a_directory_cannot_replace_a_file_and_the_file_survives(tmp_path):
    target = tmp_path / "export"
    target.write_bytes(b"a file")
    with pytest.raises(OSError):
        with atomic_files.staged(str(target)) as tmp:
            _write_tree(tmp, {"saved_model.pb": b"v1"})
    assert target.read_bytes() == b"a file"
    assert os.listdir(tmp_path) == ["export"]
