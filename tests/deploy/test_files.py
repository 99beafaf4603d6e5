"""``dnlseg.deploy.files.atomic_output``: the output is complete or absent, nothing else is left behind."""

import os
import stat

import pytest

from dnlseg.deploy.files import atomic_output


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    path = tmp_path / "model.onnx"
    with atomic_output(path) as tmp:
        tmp.write_bytes(b"graph")
        assert not path.exists() and tmp.parent == path.parent
    assert path.read_bytes() == b"graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_the_file_gets_the_mode_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "m.onnx") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_a_failure_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_output(path) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_failure_removes_the_folders_it_made_and_only_those(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "kept" / "new" / "deeper" / "m.onnx"):
        raise RuntimeError("export failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
