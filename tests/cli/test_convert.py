"""``dnlseg convert`` writes an mmseg checkpoint once as a dnlseg checkpoint that loads like the original."""

import pytest
import torch

from dnlseg.cli.convert import convert
from dnlseg.errors import CheckpointMismatchError, WeightFileError
from tests.mmseg_helpers import mmseg_model, recipe_model, save_mmseg_checkpoint
from tests.recipes import recipe

RECIPE = recipe("cityscapes/nl_r50_d8_512x1024_80k")


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "nonlocal_r50-d8.pth"
    return save_mmseg_checkpoint(mmseg_model(RECIPE), path, [str(i) for i in range(19)])


def test_converted_checkpoint_validates_like_the_mmseg_file(zoo_file, cityscapes_root, tmp_path):
    from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO

    output = convert(["--ckpt_path", str(zoo_file), "--output", str(tmp_path / "nl.ckpt")])
    direct, converted = (recipe_model(RECIPE, cityscapes_root, tmp_path).eval() for _ in range(2))
    for model, path in ((direct, zoo_file), (converted, output)):
        checkpoint = AtomicCheckpointIO().load_checkpoint(path)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(images), direct(images), rtol=0, atol=0)
    assert torch.load(output, weights_only=True)["mmseg_meta"]["iter"] == 80000


def test_convert_never_overwrites_and_refuses_what_it_cannot_map(zoo_file, tmp_path):
    (tmp_path / "taken.ckpt").write_bytes(b"a run's checkpoint")
    with pytest.raises(WeightFileError, match="exists; dnlseg convert never overwrites"):
        convert(["--ckpt_path", str(zoo_file), "--output", str(tmp_path / "taken.ckpt")])
    assert (tmp_path / "taken.ckpt").read_bytes() == b"a run's checkpoint"
    state = torch.load(zoo_file, weights_only=True)
    state["state_dict"]["decode_head.bottleneck.conv.weight"] = torch.zeros(1)  # e.g. PSPHead
    torch.save(state, tmp_path / "psp.pth")
    with pytest.raises(CheckpointMismatchError, match=r"no counterpart for: decode_head\.bottleneck\.conv\.weight"):
        convert(["--ckpt_path", str(tmp_path / "psp.pth"), "--output", str(tmp_path / "psp.ckpt")])
    torch.save({"state_dict": {"network.x": torch.zeros(1)}}, tmp_path / "dnlseg.pth")
    with pytest.raises(WeightFileError, match="is not an mmsegmentation checkpoint"):
        convert(["--ckpt_path", str(tmp_path / "dnlseg.pth"), "--output", str(tmp_path / "x.ckpt")])
    assert not (tmp_path / "psp.ckpt").exists() and not (tmp_path / "x.ckpt").exists()


def test_convert_names_a_head_it_does_not_rename_and_how_to_use_its_file(zoo_file, tmp_path):
    """A DANet file (keys built by mmseg's DAHead) loads with its recipe, not through convert; PSANet's not at all."""
    from mmseg_reference import decode_head, load_config

    state = {k: v for k, v in torch.load(zoo_file, weights_only=True)["state_dict"].items() if "decode_head" not in k}
    danet = decode_head(load_config("danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py").model.decode_head)
    torch.save(
        {"state_dict": {**state, **{f"decode_head.{k}": v for k, v in danet.state_dict().items()}}}, tmp_path / "d.pth"
    )
    with pytest.raises(CheckpointMismatchError, match=r"a DAHead file loads as it is: give it to --ckpt_path"):
        convert(["--ckpt_path", str(tmp_path / "d.pth"), "--output", str(tmp_path / "d.ckpt")])
    state["decode_head.reduce.conv.weight"] = state["decode_head.proj.conv.weight"] = torch.zeros(1)  # PSAHead's
    torch.save({"state_dict": state}, tmp_path / "psa.pth")
    with pytest.raises(CheckpointMismatchError, match=r"is a PSANet \(PSAHead\) checkpoint: dnlseg does not support"):
        convert(["--ckpt_path", str(tmp_path / "psa.pth"), "--output", str(tmp_path / "psa.ckpt")])
    assert not (tmp_path / "d.ckpt").exists() and not (tmp_path / "psa.ckpt").exists()
