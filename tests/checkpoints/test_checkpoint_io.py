"""checkpoint_io: atomic saves (a temporary beside the checkpoint, renamed over it), remote paths left to Lightning;
files with checksums and the user's umask; a damaged file refused on load."""

import os
import stat

import pytest
import torch

from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.checkpoints.weight_files import NO_VERIFY_ENV, verify_checksums
from dnlseg.errors import ChecksumMismatchError, UserError
from tests.helpers import damage, damage_points


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


def test_a_lightning_checkpoint_loads_on_the_cpu_as_it_was_saved(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(
        {"pytorch-lightning_version": "2.6", "state_dict": {"w": torch.arange(3.0)}}, tmp_path / "a.ckpt"
    )
    loaded = io.load_checkpoint(tmp_path / "a.ckpt")
    assert set(loaded) == {"pytorch-lightning_version", "state_dict"} and loaded["pytorch-lightning_version"] == "2.6"
    assert loaded["state_dict"]["w"].tolist() == [0.0, 1.0, 2.0] and loaded["state_dict"]["w"].device.type == "cpu"


def test_an_mmseg_model_zoo_file_comes_back_as_a_lightning_checkpoint_of_its_weights(tmp_path):
    import lightning

    path = tmp_path / "dnl_r50.pth"
    weights = {"backbone.conv1.weight": torch.ones(2), "decode_head.conv_seg.bias": torch.zeros(1)}
    torch.save({"meta": {"epoch": 80}, "state_dict": weights}, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["pytorch-lightning_version"] == lightning.__version__
    assert loaded["mmseg_checkpoint"] == {"path": str(path), "meta": {"epoch": 80}}
    assert {k: v.tolist() for k, v in loaded["state_dict"].items()} == {k: v.tolist() for k, v in weights.items()}


def test_unreadable_checkpoints_raise_naming_the_ckpt_path_and_missing_ones_stay_file_not_found(tmp_path):
    import argparse

    from dnlseg.errors import WeightFileError

    io = AtomicCheckpointIO()
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(WeightFileError) as error:
        io.load_checkpoint(tmp_path / "text.ckpt")
    assert str(error.value).startswith(
        f"--ckpt_path {tmp_path / 'text.ckpt'} is not a file torch.load (or safetensors) can read ("
    )
    torch.save({"hparams": argparse.Namespace(lr=0.1)}, tmp_path / "objects.ckpt")
    with pytest.raises(WeightFileError) as error:
        io.load_checkpoint(tmp_path / "objects.ckpt")
    assert str(error.value).startswith(f"--ckpt_path {tmp_path / 'objects.ckpt'} holds Python objects besides tensors")
    assert str(error.value).endswith("if you trust the file, --weights_only=false")
    trusted = io.load_checkpoint(tmp_path / "objects.ckpt", weights_only=False)  # the option it names works
    assert trusted["hparams"].lr == 0.1


@pytest.mark.parametrize("where", ["pickle", "tensor data", "zip index"])
def test_a_damaged_checkpoint_is_refused_before_it_loads_naming_the_file(lightning_checkpoint, tmp_path, where):
    damaged = damage(lightning_checkpoint, tmp_path / "last.ckpt", damage_points(lightning_checkpoint)[where])
    with pytest.raises(UserError) as error:
        AtomicCheckpointIO().load_checkpoint(damaged)
    assert str(error.value).startswith(f"--ckpt_path {damaged}: ") and "\n" not in str(error.value)
    assert "damaged" in str(error.value) or "not a file torch.load" in str(error.value)


def test_a_checkpoint_damaged_in_its_tensor_data_loads_with_no_verify(lightning_checkpoint, tmp_path, monkeypatch):
    damaged = damage(lightning_checkpoint, tmp_path / "last.ckpt", damage_points(lightning_checkpoint)["tensor data"])
    with pytest.raises(ChecksumMismatchError, match="the file is damaged, record archive/data/"):
        AtomicCheckpointIO().load_checkpoint(damaged)
    monkeypatch.setenv(NO_VERIFY_ENV, "1")
    loaded, intact = AtomicCheckpointIO().load_checkpoint(damaged), torch.load(lightning_checkpoint)
    assert loaded["global_step"] == intact["global_step"] == 1
    changed = [k for k, v in loaded["state_dict"].items() if not torch.equal(v, intact["state_dict"][k])]
    assert len(changed) == 1  # what the user asked for: the file as it is


def test_own_saves_carry_checksums_even_with_torchs_crc_option_off(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.arange(4096.0)}, tmp_path / "a.ckpt")
        assert torch.serialization.get_crc32_options() is False  # the user's setting is left as it was
    finally:
        torch.serialization.set_crc32_options(True)
    assert verify_checksums(tmp_path / "a.ckpt", "x") is True
    damage(tmp_path / "a.ckpt", tmp_path / "a.ckpt", damage_points(tmp_path / "a.ckpt")["tensor data"], size=8)
    with pytest.raises(ChecksumMismatchError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoint_files_are_created_with_the_users_umask_like_every_other_file(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
        (tmp_path / "config.yaml").write_text("a: 1\n")  # how every other file of a run is written
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == mode


def test_a_full_disk_at_the_write_names_the_checkpoint_and_keeps_the_previous_one(tmp_path):
    import errno

    class FullDisk(AtomicCheckpointIO):
        def write(self, f, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as f.write raises it: no file name

    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    with pytest.raises(OSError) as error:
        FullDisk().save_checkpoint({"global_step": 2}, tmp_path / "last.ckpt")
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(tmp_path / "last.ckpt"))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"global_step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
