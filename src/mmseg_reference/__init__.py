"""mmsegmentation 1.2.2 itself, as the reference the parity tests and the block benchmark compare dnlseg with.

Test and benchmark use only: it needs the ``parity`` extra (``mmsegmentation``, ``mmcv-lite``, ``mmengine``; ``make
test`` installs it) and ``dnlseg`` never imports it. mmcv-lite has no compiled ops, and importing ``mmseg.models``
pulls ``mmcv.ops`` in; none of the ResNet, NLHead, DNLHead and FCNHead modules uses an op, so a stand-in
``mmcv.ops`` module whose every name is a class that refuses to be built is put in ``sys.modules`` first
(docs/science.md section 6.1).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn


def missing_op(name: str) -> type:
    """A stand-in for the compiled op ``mmcv.ops.<name>``: importable and subclassable, never constructible."""

    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"mmcv.ops.{name} is a compiled op that mmcv-lite does not have")

    return type(name, (), {"__init__": refuse})


def stand_in_ops() -> types.ModuleType:
    module = types.ModuleType("mmcv.ops")

    def getattr_(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return missing_op(name)

    module.__dict__["__getattr__"] = getattr_  # a module's __getattr__ (PEP 562)
    return module


def import_mmseg() -> types.ModuleType:
    """``mmseg.models`` (its registry filled), importable without mmcv's compiled ops."""
    if "mmcv.ops" not in sys.modules:
        try:
            import mmcv.ops  # noqa: F401  (the real ops, where a full mmcv is installed)
        except (ImportError, OSError):
            sys.modules["mmcv.ops"] = stand_in_ops()
    import mmseg.models
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    return mmseg.models


def config_path(name: str) -> Path:
    """A config shipped in the mmseg wheel, e.g. ``dnlnet/dnl_r50-d8_4xb2-80k_cityscapes-512x1024.py``."""
    import mmseg

    path = Path(mmseg.__file__).parent / ".mim" / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"no mmseg config {name} in {path.parent}")
    return path


def load_config(name: str):
    """The mmengine ``Config`` of ``name``, with SyncBN replaced by BN (one process, no process group)."""
    from mmengine.config import Config

    config = Config.fromfile(str(config_path(name)))
    text = config.pretty_text.replace("SyncBN", "BN")
    return Config.fromstring(text, ".py")


def build_segmentor(name: str, num_classes: int | None = None) -> nn.Module:
    """mmseg's ``EncoderDecoder`` of config ``name``, BN instead of SyncBN, no pretrained download, eval mode."""
    models = import_mmseg()
    config = load_config(name)
    config.model.pretrained = None
    config.model.backbone.init_cfg = None
    if num_classes is not None:
        config.model.decode_head.num_classes = num_classes
        config.model.auxiliary_head.num_classes = num_classes
    model = models.build_segmentor(config.model)
    model.init_weights()
    return model.eval()


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, size: tuple[int, int] = (64, 64)) -> nn.Module:
    """Random weights everywhere, including what mmseg initialises to constants: BatchNorm weights, biases and
    running statistics, and the zero-initialised norm of a block's output (else those branches are invisible).

    Each BatchNorm's running statistics are those of its own input in an eval forward of a random batch of
    ``size`` images, perturbed by a random shift and factor per channel: activations stay of order one, so the
    attention softmaxes are not one-hot and the comparisons see every branch."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    def normal(shape):
        return torch.randn(shape, generator=generator)

    def calibrate(norm, inputs):
        x = inputs[0]  # (N, C, H, W)
        var = x.var(dim=(0, 2, 3), unbiased=False)
        norm.running_mean.copy_(x.mean(dim=(0, 2, 3)) + 0.1 * var.sqrt() * normal(var.shape))
        norm.running_var.copy_(var * uniform(var.shape, 0.7, 1.3))

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.copy_(normal(module.weight.shape) / module.weight[0].numel() ** 0.5)
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape) * 0.1)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(normal(module.bias.shape) * 0.1)
            hooks.append(module.register_forward_pre_hook(calibrate))
    was_training = model.training
    model.eval()
    segmentor: Any = model  # an mmseg EncoderDecoder (mmseg has no type information)
    features = segmentor.extract_feat(normal((2, 3, *size)))
    for head in (segmentor.decode_head, getattr(model, "auxiliary_head", None)):
        if head is not None:
            head(features)
    for hook in hooks:
        hook.remove()
    return model.train(was_training)


def context_block(kind: str, channels: int, reduction: int = 2) -> nn.Module:
    """mmseg's block as its NLHead / DNLHead build it (materialised P x P attention), BatchNorm after ``conv_out``:
    ``kind`` "NL" (mmcv's ``NonLocal2d``) or "DNL" (mmseg's ``DisentangledNonLocal2d``, temperature 0.05)."""
    import_mmseg()
    from mmcv.cnn import NonLocal2d
    from mmseg.models.decode_heads.dnl_head import DisentangledNonLocal2d

    args = {"in_channels": channels, "reduction": reduction, "use_scale": True, "mode": "embedded_gaussian"}
    norm = {"norm_cfg": {"type": "BN", "requires_grad": True}}
    if kind == "NL":
        return NonLocal2d(**args, **norm)
    return DisentangledNonLocal2d(**args, **norm, temperature=0.05)
