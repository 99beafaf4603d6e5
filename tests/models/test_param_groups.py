"""Parameter groups from YAML rules give every parameter the lr and weight decay mmengine's
``DefaultOptimWrapperConstructor`` gives it under mmseg's ``paramwise_cfg``."""

from functools import partial

import pytest
import torch

from dnlseg.checkpoints.mmseg import SEGMENTOR_KEYS, rename
from dnlseg.context import DisentangledNonLocal2d
from dnlseg.models import SegmentationModule
from dnlseg.models.encoder import EncoderOptions
from dnlseg.models.network import NetworkOptions
from dnlseg.models.param_groups import ParamGroup, apply_multipliers, param_groups
from dnlseg.models.schedule import OptimizationOptions
from tests.mmseg_helpers import mirrored_config, recipe_model
from tests.recipes import recipe


def mmengine_settings(mmseg_model, optim_wrapper: dict) -> dict[str, tuple[float, float]]:
    """dnlseg parameter name -> (lr, weight decay) of mmengine's optimiser for ``mmseg_model``."""
    from mmengine.optim import build_optim_wrapper

    optimizer = build_optim_wrapper(mmseg_model, optim_wrapper).optimizer
    names = {id(p): n for n, p in mmseg_model.named_parameters()}
    settings = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            settings["network." + rename(names[id(param)], SEGMENTOR_KEYS)] = (group["lr"], group["weight_decay"])
    return settings


def our_settings(model: SegmentationModule) -> dict[str, tuple[float, float]]:
    optimizer = model.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def poly_trainer(model):
    from types import SimpleNamespace

    model._trainer = SimpleNamespace(estimated_stepping_batches=100)
    return model


@pytest.mark.slow
def test_dnl_769_recipe_groups_equal_what_mmengine_makes_of_mmsegs_config(cityscapes_root, tmp_path):
    """mmseg's DNL 769x769 config asks ``theta/phi: wd_mult=0``; mmengine reads ``decay_mult``, so its optimiser
    (and the zoo model's training) kept weight decay 5e-4 on query and key. The recipe does what mmseg did."""
    from mmseg_reference import build_segmentor, load_config

    name = recipe("cityscapes/dnl_r101_d8_769x769_80k")
    config = load_config(mirrored_config(name))
    assert dict(config.optim_wrapper.paramwise_cfg.custom_keys.theta) == {"wd_mult": 0.0}
    expected = mmengine_settings(build_segmentor(mirrored_config(name)), config.optim_wrapper)
    assert expected["network.decode_head.context.query.weight"] == (0.01, 5e-4)
    assert our_settings(poly_trainer(recipe_model(name, cityscapes_root, tmp_path))) == expected


def test_rules_give_the_lr_and_decay_mmengines_custom_keys_give():
    from mmseg_reference import build_segmentor

    mmseg_model = build_segmentor("dnlnet/dnl_r50-d8_4xb2-80k_cityscapes-769x769.py")
    custom_keys = {"backbone": {"lr_mult": 0.1}, "theta": {"decay_mult": 0.0}, "phi": {"decay_mult": 0.0}}
    optim_wrapper = {
        "type": "OptimWrapper",
        "optimizer": {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "paramwise_cfg": {"custom_keys": custom_keys},
    }
    expected = mmengine_settings(mmseg_model, optim_wrapper)
    rules = [ParamGroup(r"^network\.encoder\.", lr_mult=0.1), ParamGroup(r"context\.(query|key)\.", wd_mult=0.0)]
    model = SegmentationModule(
        num_classes=19,
        network=NetworkOptions(encoder=EncoderOptions(name="tu-resnet50c"), context=partial(DisentangledNonLocal2d)),
        optimization=OptimizationOptions(param_groups=rules),
    )
    ours = our_settings(poly_trainer(model))
    assert ours.keys() == expected.keys()
    assert all(ours[k] == pytest.approx(expected[k], rel=1e-12) for k in ours)
    assert ours["network.decode_head.context.key.bias"] == (0.01, 0.0)
    assert ours["network.encoder.model.conv1.0.weight"] == pytest.approx((0.001, 5e-4))


def test_first_matching_rule_wins_and_a_rule_matching_nothing_is_an_error():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    groups = param_groups(net, [ParamGroup(r"^1\.", wd_mult=0.0), ParamGroup(r"weight", lr_mult=2.0)])
    assert [(g["name"], len(g["params"])) for g in groups] == [("default", 1), (r"^1\.", 2), ("weight", 1)]
    optimizer = apply_multipliers(torch.optim.SGD(groups, lr=0.1, weight_decay=1e-4))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.1, 1e-4), (0.1, 0.0), (0.2, 1e-4)]
    with pytest.raises(ValueError, match=r"pattern\(s\) \['quer'\] match no trainable parameter"):
        param_groups(net, [ParamGroup("quer")])
    with pytest.raises(ValueError, match="is not a regular expression"):
        ParamGroup("(")
