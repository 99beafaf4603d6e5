"""mmseg model-zoo checkpoints load into the recipes' models: recognised, mapped key by key, and then compute
mmseg's own logits (eval, random weights and BatchNorm statistics, the zero-initialised norms randomised too);
a checkpoint that does not fit says which one, into which model, and the first keys that do not fit."""

import dataclasses
import re
from functools import partial

import pytest
import torch

from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.checkpoints.mmseg import (
    MMSEG_HEADS,
    MMSEG_KEY,
    checkpoint_weights,
    describe_mmseg,
    is_mmseg_checkpoint,
    mmseg_key_map,
)
from dnlseg.cli.lightning_cli import run_cli
from dnlseg.context import DisentangledNonLocal2d
from dnlseg.errors import CheckpointMismatchError, WeightFileError
from dnlseg.models import SegmentationModule
from dnlseg.models.encoder import EncoderOptions
from dnlseg.models.heads import DAHead, OCRHead
from dnlseg.models.network import NetworkOptions
from tests.mmseg_helpers import mirrored_config, mmseg_model, mmseg_zoo_state, recipe_model, save_mmseg_checkpoint
from tests.recipes import MMSEG_RECIPES, recipe, recipe_cpu_args

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


UNSUPPORTED = {  # mmseg configs of heads dnlseg does not read, what the refusal names and the first key it shows
    "psanet/psanet_r50-d8_4xb2-80k_cityscapes-512x1024.py": "is a PSANet (PSAHead) checkpoint: dnlseg does not "
    "support that head (its PSAMask is a compiled op); 12 checkpoint key(s) of a module dnlseg has no counterpart "
    "for: decode_head.reduce.conv.weight, ",
    "segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py": "is a SegFormer (SegformerHead) checkpoint: "
    "dnlseg does not support that head (an all-MLP head on a MixVisionTransformer backbone); 12 checkpoint key(s) "
    "of a module dnlseg has no counterpart for: decode_head.convs.0.conv.weight, ",
    "apcnet/apcnet_r50-d8_4xb2-80k_cityscapes-512x1024.py": "is a checkpoint of a decode head dnlseg does not know: "
    "dnlseg does not support that head (an unknown decode head); 134 checkpoint key(s) of a module dnlseg has no "
    "counterpart for: decode_head.acm_modules.0.pooled_redu_conv.conv.weight, ",
}


@pytest.fixture(scope="module")
def unsupported_files(tmp_path_factory):
    """{mmseg config: a zoo-format file of its model, built by mmseg 1.2.2}."""
    folder = tmp_path_factory.mktemp("unsupported")
    files = {}
    for index, config in enumerate(UNSUPPORTED):
        files[config] = folder / f"{index}.pth"
        torch.save({"meta": {"iter": 80000}, "state_dict": mmseg_zoo_state(config)}, files[config])
    return files


@pytest.mark.parametrize("config", UNSUPPORTED)
def test_a_zoo_file_of_a_head_dnlseg_does_not_read_is_refused_naming_the_head(config, unsupported_files):
    path = unsupported_files[config]
    with pytest.raises(CheckpointMismatchError) as error:
        load_through_lightning_hooks(dnl_r50(), path)
    message = str(error.value)
    assert "\n" not in message and f"the mmsegmentation checkpoint {path} {UNSUPPORTED[config]}" in message
    assert "dnlseg reads mmseg's NLHead, DNLHead, GCHead, CCHead, DAHead, ANNHead, ISAHead, EMAHead, OCRHead" in message
    with pytest.raises(CheckpointMismatchError, match=re.escape(UNSUPPORTED[config])):
        checkpoint_weights(dnl_r50(), path)  # fit --model.init_weights


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--ckpt_path", "{file}"],
        ["predict", "--ckpt_path", "{file}"],
        ["fit", "--model.init_weights", "{file}", "--trainer.max_steps=1"],
    ],
    ids=["validate", "predict", "fit-init_weights"],
)
def test_the_refusal_comes_before_any_network_or_folder_is_built(
    args, unsupported_files, cityscapes_root, tmp_path, monkeypatch
):
    def built(*args, **kwargs):
        raise AssertionError("a network was built for a checkpoint that is refused")

    monkeypatch.setattr("dnlseg.models.network.SegmentationNetwork.from_options", built)
    file = unsupported_files["psanet/psanet_r50-d8_4xb2-80k_cityscapes-512x1024.py"]
    command, *rest = args
    argv = [command, *recipe_cpu_args(recipe("cityscapes/dnl_r50_d8_512x1024_80k"), cityscapes_root, tmp_path)]
    with pytest.raises(CheckpointMismatchError, match=r"is a PSANet \(PSAHead\) checkpoint: dnlseg does not support"):
        run_cli([*argv, *(a.format(file=file) for a in rest)])
    assert not any(tmp_path.iterdir())  # no run or evaluation folder


@pytest.mark.parametrize("config", [mirrored_config(p) for p in MMSEG_RECIPES], ids=lambda c: c.split("/")[0])
def test_the_head_of_every_mirrored_config_is_named_from_its_keys(config):
    """The decode heads of the configs the recipes mirror, built by mmseg (small), as a zoo file keys them."""
    from mmseg_reference import decode_head, load_config

    model = load_config(config).model
    heads = model.decode_head if isinstance(model.decode_head, list) else [model.decode_head]
    places = ["decode_head."] if len(heads) == 1 else [f"decode_head.{i}." for i in range(len(heads))]
    state = {
        place + k: v
        for place, head in zip(places, heads, strict=True)
        for k, v in decode_head(head).state_dict().items()
    }
    name = describe_mmseg(state).split(",")[0]
    assert name == ("OCRHead cascade on an FCNHead" if len(heads) == 2 else heads[0].type)
    assert {h.head for h in MMSEG_HEADS if h.unsupported is None} >= {head.type for head in heads}


def test_a_file_of_another_supported_head_names_both_heads_and_the_keys(mmseg_dnl_r50, tmp_path):
    from mmseg_reference import decode_head, load_config

    danet = decode_head(load_config("danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py").model.decode_head)
    state = {k: v for k, v in mmseg_dnl_r50.state_dict().items() if not k.startswith("decode_head.")}
    state.update({f"decode_head.{k}": v for k, v in danet.state_dict().items()})
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "danet.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        load_through_lightning_hooks(dnl_r50(), tmp_path / "danet.pth")
    lines = str(error.value).splitlines()
    assert "(DAHead, ResNetV1c-50 backbone, 5 classes, FCN aux head)" in lines[0]
    assert "(encoder tu-resnet50c, context DisentangledNonLocal2d, 19 classes)" in lines[0]
    assert lines[1].startswith("36 checkpoint key(s) the model does not have: decode_head.pam_in_conv.conv.weight, ")
    assert lines[2].startswith("32 model key(s) the checkpoint does not have: network.decode_head.conv_in.0.weight")
    assert lines[3].startswith("2 shape(s) differ: network.decode_head.classifier.weight (5, 32, 1, 1) vs model (19, ")
    assert len(lines) == 5  # and the line saying what dnlseg reads
    # ... and a DNL file into a DANet model
    network = NetworkOptions(encoder=EncoderOptions(name="tu-resnet50c"), decode_head=partial(DAHead))
    path = save_mmseg_checkpoint(mmseg_dnl_r50, tmp_path / "dnl.pth", CITYSCAPES_CLASSES)
    with pytest.raises(
        CheckpointMismatchError, match=r"\(DNLHead, .*\) does not fit .*\(encoder tu-resnet50c, decode "
    ):
        load_through_lightning_hooks(SegmentationModule(num_classes=19, network=network), path)


def test_an_ocr_models_heads_are_the_cascades_stages_and_it_has_no_auxiliary_head():
    network = NetworkOptions(encoder=EncoderOptions(name="resnet18"), decode_head=partial(OCRHead), head_channels=16)
    names = mmseg_key_map(SegmentationModule(num_classes=3, network=dataclasses.replace(network, aux_channels=8)))
    assert names["decode_head.0.convs.0.conv.weight"] == "network.aux_head.conv.0.weight"
    assert names["decode_head.0.conv_seg.bias"] == "network.aux_head.classifier.bias"
    assert names["decode_head.1.object_context_block.query_project.0.conv.weight"] == (
        "network.decode_head.attention.query.0.conv.weight"
    )
    assert names["decode_head.1.conv_seg.weight"] == "network.decode_head.conv_seg.weight"
    assert not [k for k in names if k.startswith("auxiliary_head.") or k.startswith("decode_head.conv")]


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
    "cityscapes/gcnet_r50_d8_512x1024_80k",
    "cityscapes/ccnet_r50_d8_512x1024_80k",  # mmcv 2.1.0's CrissCrossAttention (criss_cross_oracle)
    "cityscapes/danet_r50_d8_512x1024_80k",
    "cityscapes/ann_r50_d8_512x1024_80k",
    "cityscapes/isanet_r50_d8_512x1024_80k",
    "cityscapes/emanet_r50_d8_512x1024_80k",
    "cityscapes/ocrnet_r101_d8_512x1024_80k",  # mmseg's CascadeEncoderDecoder: decode_head.0 -> our aux head
]


@pytest.mark.slow
@pytest.mark.parametrize("name", EVAL_RECIPES)
def test_recipe_with_mmseg_checkpoint_computes_mmsegs_logits(name, cityscapes_root, tmp_path, criss_cross_oracle):
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [  # the heads whose zoo files tests/test_mmseg_predict.py does not run through `dnlseg predict`
        "cityscapes/gcnet_r50_d8_512x1024_80k",
        "cityscapes/ccnet_r50_d8_512x1024_80k",
        "cityscapes/ann_r50_d8_512x1024_80k",
        "cityscapes/isanet_r50_d8_512x1024_80k",
        "cityscapes/emanet_r50_d8_512x1024_80k",
    ],
)
def test_fit_init_weights_starts_from_every_weight_and_buffer_of_a_zoo_file(
    name, cityscapes_root, tmp_path, criss_cross_oracle
):
    reference = mmseg_model(recipe(name))
    path = save_mmseg_checkpoint(reference, tmp_path / "zoo.pth", CITYSCAPES_CLASSES)
    args = recipe_cpu_args(recipe(name), cityscapes_root, tmp_path)
    model = run_cli([*args, f"--model.init_weights={path}"], run=False).model  # what `fit` builds, not run
    names, state = mmseg_key_map(model), model.state_dict()
    assert len(names) == len(state) == len(reference.state_dict())
    for theirs, value in reference.state_dict().items():
        assert torch.equal(state[names[theirs]], value), theirs


@pytest.mark.slow
def test_analyze_and_validate_read_a_zoo_file_alike(cityscapes_root, tmp_path):
    """``dnlseg analyze`` loads the GCNet zoo file as ``dnlseg validate`` does (same loss and mIoU, unlike the model
    without it) and reports its block's unary consistency."""
    from dnlseg.cli.analyze import analyze

    name = recipe("cityscapes/gcnet_r50_d8_512x1024_80k")
    path = save_mmseg_checkpoint(mmseg_model(name), tmp_path / "gcnet.pth", CITYSCAPES_CLASSES)
    args = recipe_cpu_args(name, cityscapes_root, tmp_path)
    validated = {}
    for ckpt in (path, None):
        trainer = run_cli(["validate", *args, *(["--ckpt_path", str(path)] if ckpt else [])]).trainer
        validated[ckpt] = {k: float(trainer.callback_metrics[k]) for k in ("val/loss", "val/mIoU")}
    overrides = [a for a in args if a not in ("-c", str(name))]
    analyzed = analyze(
        ["-c", str(name), "--ckpt_path", str(path), "--num_images", "1", "--output_dir", str(tmp_path / "out")]
        + [*overrides, "--accelerator", "cpu"]
    )
    assert {k: analyzed[k] for k in validated[path]} == pytest.approx(validated[path], rel=1e-6)
    assert validated[None]["val/loss"] != pytest.approx(validated[path]["val/loss"], rel=1e-3)
    assert analyzed["val/unary_boundary_consistency/decode_head.context"] > 0
