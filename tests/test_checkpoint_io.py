"""checkpoint_io: atomic saves (a temporary beside the checkpoint, renamed over it), remote paths left to Lightning."""

import pytest
import torch

from dnlseg.checkpoint_io import AtomicCheckpointIO


def test_storage_options_and_remote_paths(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    with pytest.raises(TypeError, match="^AtomicCheckpointIO takes no storage_options"):
        io.save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})
    remote = []
    monkeypatch.setattr(
        "lightning.pytorch.plugins.io.TorchCheckpointIO.save_checkpoint",
        lambda self, checkpoint, path, storage_options="unset": remote.append((checkpoint, path, storage_options)),
    )
    io.save_checkpoint({"step": 3}, f"file://{tmp_path}/b.ckpt")  # a file URL is a local path: saved here
    assert torch.load(tmp_path / "b.ckpt", weights_only=True) == {"step": 3} and remote == []
    io.save_checkpoint({"step": 4}, "s3://bucket/c.ckpt")
    assert remote == [({"step": 4}, "s3://bucket/c.ckpt", None)]


def test_the_checkpoint_is_written_to_a_hidden_temporary_beside_it_and_missing_folders_are_made(tmp_path):
    path = tmp_path / "a" / "b" / "last.ckpt"
    seen = []

    class RecordingIO(AtomicCheckpointIO):
        def write(self, f, data):
            seen.extend(path.parent.iterdir())  # what exists while the bytes are written
            super().write(f, data)

    RecordingIO().save_checkpoint({"step": 1}, path)
    (tmp,) = seen
    assert tmp.parent == path.parent and tmp.name.startswith(".last.ckpt.") and tmp.name.endswith(".tmp")
    assert not tmp.exists() and torch.load(path, weights_only=True) == {"step": 1}


def test_a_stale_temporary_of_a_killed_write_is_removed_by_the_next_save(tmp_path):
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".other.ckpt.abc.tmp").write_bytes(b"another checkpoint's")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.abc.tmp", "last.ckpt"]
