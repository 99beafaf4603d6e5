"""mmseg model-zoo checkpoints load into the recipes' models: recognised, mapped key by key, and then compute
mmseg's own logits (eval, random weights and BatchNorm statistics, the zero-initialised norms randomised too);
a checkpoint that does not fit says which one, into which model, and the first keys that do not fit."""

from functools import partial

import pytest
import torch

from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.checkpoints.mmseg import MMSEG_KEY, checkpoint_weights, is_mmseg_checkpoint
from dnlseg.context import DisentangledNonLocal2d
from dnlseg.errors import CheckpointMismatchError, WeightFileError
from dnlseg.models import SegmentationModule
from dnlseg.models.encoder import EncoderOptions
from dnlseg.models.network import NetworkOptions
from tests.mmseg_helpers import mmseg_model, recipe_model, save_mmseg_checkpoint
from tests.recipes import recipe

CITYSCAPES_CLASSES = [str(i) for i in range(19)]


def load_through_lightning_hooks(model: SegmentationModule, path) -> None:
    """What Lightning does with ``--ckpt_path``: the checkpoint IO reads the file, ``on_load_checkpoint`` sees the
    dict, then ``load_state_dict`` (strict). ``test_predict_mmseg`` runs the real ``dnlseg predict``."""
    checkpoint = AtomicCheckpointIO().load_checkpoint(path)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module")
def mmseg_dnl_r50():
    return mmseg_model(recipe("cityscapes/dnl_r50_d8_512x1024_80k"))


def dnl_r50(**kwargs) -> SegmentationModule:
    network = NetworkOptions(encoder=EncoderOptions(name="tu-resnet50c"), context=partial(DisentangledNonLocal2d))
    return SegmentationModule(num_classes=19, network=network, **kwargs)


def test_an_mmseg_file_is_recognised_and_a_lightning_one_is_not(mmseg_dnl_r50, tmp_path):
    path = save_mmseg_checkpoint(mmseg_dnl_r50, tmp_path / "dnl.pth", CITYSCAPES_CLASSES)
    raw = torch.load(path, weights_only=True)  # the zoo's meta is plain data: loads with weights_only
    assert is_mmseg_checkpoint(raw)
    assert is_mmseg_checkpoint({"meta": {"dataset_meta": {"classes": ("road",)}}, "state_dict": raw["state_dict"]})
    assert not is_mmseg_checkpoint({"pytorch-lightning_version": "2.6.0", "state_dict": {"network.x": 1}})
    checkpoint = AtomicCheckpointIO().load_checkpoint(path)
    assert checkpoint["pytorch-lightning_version"] and checkpoint[MMSEG_KEY]["path"] == str(path)
    assert checkpoint[MMSEG_KEY]["meta"]["iter"] == 80000


def test_an_mmseg_files_step_is_its_meta_iter_and_without_one_step_0_saying_so(mmseg_dnl_r50, tmp_path):
    path = save_mmseg_checkpoint(mmseg_dnl_r50, tmp_path / "dnl.pth", CITYSCAPES_CLASSES)  # meta.iter 80000
    model = dnl_r50()
    load_through_lightning_hooks(model, path)
    assert (model.evaluated_step, model.weights_step_source) == (80000, "meta.iter of the mmsegmentation checkpoint")
    raw = torch.load(path, weights_only=True)
    del raw["meta"]["iter"]
    torch.save(raw, path)
    load_through_lightning_hooks(model, path)
    assert (
        model.evaluated_step == 0 and "records no iteration (meta.iter): shown at step 0" in model.weights_step_source
    )


def test_nl_checkpoint_into_a_dnl_config_names_both_and_the_keys(tmp_path):
    nl = mmseg_model(recipe("cityscapes/nl_r50_d8_512x1024_80k"))
    path = save_mmseg_checkpoint(nl, tmp_path / "nl.pth", CITYSCAPES_CLASSES)
    with pytest.raises(CheckpointMismatchError) as error:
        load_through_lightning_hooks(dnl_r50(), path)
    message = str(error.value)
    assert str(path) in message and "NLHead, ResNetV1c-50 backbone, 19 classes" in message
    assert "encoder tu-resnet50c, context DisentangledNonLocal2d, 19 classes" in message
    assert "network.decode_head.context.unary.weight" in message  # the DNL unary conv has no NL counterpart


def test_r101_checkpoint_into_an_r50_config_names_the_extra_blocks(mmseg_dnl_r50, tmp_path):
    state = dict(mmseg_dnl_r50.state_dict())
    for key in [k for k in state if k.startswith("backbone.layer3.5.")]:  # ResNet-101: layer3 blocks 6 .. 22
        for block in range(6, 23):
            state[key.replace("layer3.5.", f"layer3.{block}.")] = state[key]
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "r101.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"ResNetV1c-101 backbone.*\n.*does not have: backbone\.layer3\.6\."
    ):
        load_through_lightning_hooks(dnl_r50(), tmp_path / "r101.pth")


def test_an_unsupported_head_is_named(mmseg_dnl_r50, tmp_path):
    state = {k: v for k, v in mmseg_dnl_r50.state_dict().items() if ".dnl_block." not in k}
    state["decode_head.psp_modules.0.1.conv.weight"] = torch.zeros(512, 2048, 1, 1)  # mmseg's PSPHead
    torch.save({"meta": {}, "state_dict": state, "optimizer": {}}, tmp_path / "psp.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"no counterpart for: decode_head\.psp_modules\.0\.1\.conv\.weight"
    ):
        load_through_lightning_hooks(dnl_r50(), tmp_path / "psp.pth")


def test_fit_initialises_from_mmseg_weights_only(mmseg_dnl_r50, tmp_path):
    path = save_mmseg_checkpoint(mmseg_dnl_r50, tmp_path / "dnl.pth", CITYSCAPES_CLASSES)
    model = dnl_r50(init_weights=str(path))
    theta = mmseg_dnl_r50.state_dict()["decode_head.dnl_block.theta.conv.weight"]
    torch.testing.assert_close(model.network.decode_head.context.query.weight, theta, rtol=0, atol=0)
    # ... and from a dnlseg checkpoint of that model
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": model.state_dict()}, tmp_path / "dnlseg.ckpt")
    again = dnl_r50(init_weights=str(tmp_path / "dnlseg.ckpt"))
    torch.testing.assert_close(again.network.decode_head.context.query.weight, theta, rtol=0, atol=0)


def test_init_weights_that_is_no_checkpoint_says_what_it_expected(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(WeightFileError, match=r"model.init_weights: .*notes.pth is not a file torch.load"):
        checkpoint_weights(dnl_r50(), tmp_path / "notes.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightFileError, match=r"neither a dnlseg checkpoint .* nor an mmseg one.*found \['weights'\]"):
        checkpoint_weights(dnl_r50(), tmp_path / "other.pth")


def test_a_fit_resuming_from_an_mmseg_file_is_pointed_to_init_weights(mmseg_dnl_r50, tmp_path):
    import lightning as L

    path = save_mmseg_checkpoint(mmseg_dnl_r50, tmp_path / "dnl.pth", CITYSCAPES_CLASSES)
    model = dnl_r50()
    model.trainer = L.Trainer(logger=False)
    model.trainer.state.fn = "fit"
    with pytest.raises(CheckpointMismatchError, match=r"no dnlseg training state .* --model.init_weights="):
        model.on_load_checkpoint(AtomicCheckpointIO().load_checkpoint(path))


EVAL_RECIPES = [
    "cityscapes/dnl_r50_d8_512x1024_80k",
    "cityscapes/nl_r50_d8_512x1024_80k",
    "cityscapes/baseline_r50_d8_512x1024_80k",
    "cityscapes/dnl_r101_d8_769x769_80k",  # align_corners=True, sliding windows
]


@pytest.mark.slow
@pytest.mark.parametrize("name", EVAL_RECIPES)
def test_recipe_with_mmseg_checkpoint_computes_mmsegs_logits(name, cityscapes_root, tmp_path):
    """<= 1e-5 relative (fp32), the network's logits and the recipe's inference mode (slide: smaller windows)."""
    reference = mmseg_model(recipe(name))
    path = save_mmseg_checkpoint(reference, tmp_path / "zoo.pth", CITYSCAPES_CLASSES)
    model = recipe_model(recipe(name), cityscapes_root, tmp_path).eval()
    load_through_lightning_hooks(model, path)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 65, 97)
    metas = [{"img_shape": (65, 97), "ori_shape": (65, 97)}] * 2
    with torch.no_grad():
        error = relative_error(model(images), reference.encode_decode(images, metas))
        assert error <= 1e-5, error
        if model.inference.mode == "slide":
            reference.test_cfg.update(crop_size=(49, 49), stride=(33, 33))  # 6 windows, as 769/513 on a small image
            inference = type(model.inference)(mode="slide", crop_size=(49, 49), stride=(33, 33))
            ours = inference(model, images, None, model.network.align_corners)
            error = relative_error(ours, reference.slide_inference(images, metas))
            assert error <= 1e-5, error
