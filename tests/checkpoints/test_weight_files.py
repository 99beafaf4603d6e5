"""weight_files: the checkpoint/model fit check names every differing, missing and extra parameter; a file whose
bytes changed after it was saved is refused before it loads."""

import pytest
import torch
from torch import nn

from dnlseg.checkpoints.weight_files import NO_VERIFY_ENV, check_state_dict_fits, read_torch_file, verify_checksums
from dnlseg.errors import CheckpointMismatchError, ChecksumMismatchError
from tests.helpers import damage, damage_points


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))


def test_a_fitting_state_dict_passes():
    check_state_dict_fits(model(), model().state_dict())


def test_every_differing_shape_is_listed_with_both_shapes():
    state = model().state_dict()
    state["0.weight"] = torch.zeros(8, 3, 1, 1)
    state["1.running_mean"] = torch.zeros(8)
    with pytest.raises(CheckpointMismatchError) as error:
        check_state_dict_fits(model(), state, source="encoder file")
    lines = str(error.value).splitlines()
    assert lines[0] == "the encoder file does not fit the model built from this config:"
    assert lines[1:4] == [
        "2 parameter shape(s) differ:",
        "  0.weight: encoder file (8, 3, 1, 1) vs model (4, 3, 1, 1)",
        "  1.running_mean: encoder file (8,) vs model (4,)",
    ]
    assert lines[-1] == "resume with the config the checkpoint was trained with (the run's saved config.yaml)"


def test_missing_and_extra_parameters_are_counted_and_named():
    state = model().state_dict()
    del state["0.bias"], state["1.weight"]
    state.update({"2.weight": torch.zeros(1), "extra.bias": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError) as error:
        check_state_dict_fits(model(), state)
    lines = str(error.value).splitlines()
    assert lines[1] == "2 parameter(s) of the model are not in the checkpoint: 0.bias, 1.weight"
    assert lines[2] == "2 parameter(s) of the checkpoint are not in the model: 2.weight, extra.bias"
    assert "shape" not in str(error.value)


def test_long_lists_name_the_first_ten():
    big = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(12)])
    with pytest.raises(CheckpointMismatchError, match=r"12 parameter\(s\) of the model are not in the checkpoint") as e:
        check_state_dict_fits(big, {})
    first_ten = ", ".join(f"{i}.weight" for i in ["0", "1", "10", "11", "2", "3", "4", "5", "6", "7"])  # as strings
    assert str(e.value).splitlines()[1].endswith(": " + first_ten)
    with pytest.raises(CheckpointMismatchError) as e:
        check_state_dict_fits(nn.Sequential(), big.state_dict())
    assert str(e.value).splitlines()[1].endswith(": " + first_ten)  # extra parameters: the first ten too


def test_non_tensor_entries_are_not_shape_checked():
    state = {**model().state_dict()}
    state["1.num_batches_tracked"] = 3  # an int where the model has a tensor: no shape to compare
    check_state_dict_fits(model(), state)


def test_a_state_dict_file_and_a_safetensors_file_are_read_on_the_cpu(tmp_path):
    from safetensors.torch import save_file

    from dnlseg.checkpoints.weight_files import read_torch_file

    torch.save({"w": torch.arange(3.0)}, tmp_path / "w.pth")
    save_file({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    assert read_torch_file(tmp_path / "w.pth", "key")["w"].tolist() == [0.0, 1.0, 2.0]
    loaded = read_torch_file(tmp_path / "w.safetensors", "key")["w"]
    assert loaded.tolist() == [1.0, 1.0] and loaded.device.type == "cpu"


def test_unreadable_weight_files_raise_naming_the_key_the_file_and_why(tmp_path):
    import argparse
    import pickle

    from dnlseg.checkpoints.weight_files import read_torch_file
    from dnlseg.errors import WeightFileError, WeightFileNotFoundError

    with pytest.raises(WeightFileNotFoundError, match=f"^model.weights: no file at {tmp_path / 'none.pth'}$"):
        read_torch_file(tmp_path / "none.pth", "model.weights")
    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "objects.pth")
    with pytest.raises(WeightFileError) as error:
        read_torch_file(tmp_path / "objects.pth", "model.weights")
    assert str(error.value) == (
        f"model.weights: {tmp_path / 'objects.pth'} holds Python objects besides tensors (argparse.Namespace), "
        "which loading with weights_only refuses; if you trust the file, load it into a state dict and save that"
    )
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightFileError) as error:
        read_torch_file(tmp_path / "plain.pkl", "model.weights")
    assert str(error.value) == (
        f"model.weights: {tmp_path / 'plain.pkl'} is not a file torch.load (or safetensors) can read "
        "(not a PyTorch pickle)"
    )
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightFileError) as error:
        read_torch_file(tmp_path / "text.pth", "model.weights")
    assert str(error.value) == (  # torch's own reason would be "KeyError: 104" (the byte "h")
        f"model.weights: {tmp_path / 'text.pth'} is not a file torch.load (or safetensors) can read "
        "(not a PyTorch pickle)"
    )
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(WeightFileError, match=r"bad.safetensors is not a file torch.load \(or safetensors\) can read"):
        read_torch_file(tmp_path / "bad.safetensors", "model.weights")


@pytest.mark.parametrize("where", ["pickle", "tensor data", "zip index"])
def test_a_checkpoint_with_1kb_overwritten_is_refused_in_one_line_naming_it(lightning_checkpoint, tmp_path, where):
    damaged = damage(lightning_checkpoint, tmp_path / "damaged.ckpt", damage_points(lightning_checkpoint)[where])
    with pytest.raises(ChecksumMismatchError) as error:
        read_torch_file(damaged, "model.init_weights")
    message = str(error.value)
    assert message.startswith(f"model.init_weights: {damaged}: the file is damaged, ") and "\n" not in message
    assert message.endswith("use an intact copy or another checkpoint, or load it anyway with dnlseg --no_verify")


def test_no_verify_loads_the_damaged_file_as_it_is(lightning_checkpoint, tmp_path, monkeypatch):
    name, intact = max(torch.load(lightning_checkpoint)["state_dict"].items(), key=lambda item: item[1].numel())
    where = damage_points(lightning_checkpoint)["tensor data"]
    damaged = damage(lightning_checkpoint, tmp_path / "damaged.ckpt", where)
    monkeypatch.setenv(NO_VERIFY_ENV, "1")
    loaded = read_torch_file(damaged, "model.init_weights")["state_dict"][name]  # torch.load itself does not notice
    assert loaded.shape == intact.shape and (loaded != intact).sum() > 0


def test_intact_files_pass_and_files_without_checksums_load_unchecked(lightning_checkpoint, tmp_path):
    assert verify_checksums(lightning_checkpoint, "x") is True
    zoo = {"meta": {"iter": 80000}, "state_dict": {"backbone.conv1.weight": torch.arange(6.0)}}
    torch.save(zoo, tmp_path / "zoo.pth")  # an mmseg model-zoo file: torch.save of a dict
    torch.save(zoo, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # torch < 1.6: no zip, no CRC
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(zoo, tmp_path / "no_crc.pth")  # every CRC written as 0
    finally:
        torch.serialization.set_crc32_options(True)
    for name, checked in (("zoo.pth", True), ("legacy.pth", False), ("no_crc.pth", False)):
        assert verify_checksums(tmp_path / name, "x") is checked
        assert read_torch_file(tmp_path / name, "x")["state_dict"]["backbone.conv1.weight"].tolist() == list(range(6))


def test_a_file_changed_after_it_was_checked_is_checked_again(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.arange(4096.0)}, path)
    assert verify_checksums(path, "x") is True
    data = path.read_bytes()
    damage(path, path, damage_points(path)["tensor data"], size=64)
    assert len(path.read_bytes()) == len(data)
    with pytest.raises(ChecksumMismatchError, match=r"record w/data/0 \(16384 bytes at byte \d+\): its CRC-32"):
        verify_checksums(path, "x")
