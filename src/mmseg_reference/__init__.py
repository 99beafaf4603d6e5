"""mmsegmentation 1.2.2 itself, as the reference the parity tests and the block benchmark compare dnlseg with.

Test and benchmark use only: it needs the ``parity`` extra (``mmsegmentation``, ``mmcv-lite``, ``mmengine``; ``make
test`` installs it) and ``dnlseg`` never imports it. mmcv-lite has no compiled ops, and importing ``mmseg.models``
pulls ``mmcv.ops`` in; none of the ResNet, NLHead, DNLHead and FCNHead modules uses an op, so a stand-in
``mmcv.ops`` module whose every name is a class that refuses to be built is put in ``sys.modules`` first
(docs/science.md section 6.1).

CCNet's ``mmcv.ops.CrissCrossAttention`` is not in mmcv-lite. mmcv 2.1.0's own ``mmcv/ops/cc_attention.py`` is pure
PyTorch and ships in mmcv's source distribution on PyPI: ``fetch_cc_attention`` downloads that with pip once (its
metadata step needs a setuptools that still has ``pkg_resources``: pip's build environment is pinned to
``setuptools<70``), extracts that one file into a cache folder and checks its SHA-256; ``criss_cross_attention``
imports the class from it, and ``use_criss_cross_attention`` hands it to mmseg's ``cc_head`` (which bound the stand-in
when it was imported): ``build_segmentor`` does so for a CCNet config. PSANet's ``PSAMask`` stays a stand-in.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
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
    """mmseg's ``EncoderDecoder`` (``CascadeEncoderDecoder`` for OCR) of config ``name``, BN instead of SyncBN, no
    pretrained download, eval mode. A CCHead gets mmcv 2.1.0's ``CrissCrossAttention`` (``use_criss_cross_attention``).
    """
    models = import_mmseg()
    config = load_config(name)
    config.model.pretrained = None
    config.model.backbone.init_cfg = None
    heads = decode_head_configs(config.model)
    if any(head.type == "CCHead" for head in heads):
        use_criss_cross_attention()
    if num_classes is not None:
        for head in heads:
            head.num_classes = num_classes
    model = models.build_segmentor(config.model)
    model.init_weights()
    return model.eval()


def decode_head_configs(model_config) -> list:
    """The configs of a segmentor's decode heads: the one of an ``EncoderDecoder`` (with its auxiliary head), the
    stages of a ``CascadeEncoderDecoder``'s list."""
    heads = model_config.decode_head if isinstance(model_config.decode_head, list) else [model_config.decode_head]
    aux = model_config.get("auxiliary_head")
    return [*heads, *(aux if isinstance(aux, list) else [aux] if aux else [])]


def use_criss_cross_attention() -> None:
    """mmseg's ``cc_head`` bound ``mmcv.ops.CrissCrossAttention`` when it was imported, to the stand-in of a compiled
    op: give it, and the stand-in ``mmcv.ops``, mmcv 2.1.0's own pure-PyTorch class (``criss_cross_attention``)."""
    from mmseg.models.decode_heads import cc_head

    oracle = criss_cross_attention()
    setattr(cc_head, "CrissCrossAttention", oracle)  # noqa: B010  (mmseg has no type information)
    ops = sys.modules.get("mmcv.ops")
    if ops is not None and not hasattr(ops, "__file__"):  # the stand-in, not a full mmcv's ops
        setattr(ops, "CrissCrossAttention", oracle)  # noqa: B010


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, size: tuple[int, int] = (64, 64)) -> nn.Module:
    """Random weights everywhere, including what mmseg initialises to constants: BatchNorm weights, biases and
    running statistics, the zero-initialised norm of a block's output, the zero-initialised last conv and the
    LayerNorm of GC's transform, and mmcv's ``Scale`` gammas (PAM, CAM, CC: 0 at init), else those branches are
    invisible. EMA's bases are random already.

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
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:  # GC's transform: 1 and 0 at init
            module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(normal(module.bias.shape) * 0.1)
        elif type(module).__name__ == "Scale":  # mmcv's Scale: PAM's, CAM's and CC's gamma, 0 at init
            scale = module.get_parameter("scale")
            scale.copy_(uniform(scale.shape, 0.5, 1.0))
    was_training = model.training
    model.eval()
    segmentor: Any = model  # an mmseg EncoderDecoder (mmseg has no type information)
    features = segmentor.extract_feat(normal((2, 3, *size)))
    if isinstance(segmentor.decode_head, nn.ModuleList):  # a cascade: each stage reads the previous one's logits
        out = segmentor.decode_head[0](features)
        for stage in segmentor.decode_head[1:]:
            out = stage(features, out)
    else:
        segmentor.decode_head(features)
    if getattr(model, "auxiliary_head", None) is not None:
        segmentor.auxiliary_head(features)
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


MMCV_SDIST = "mmcv==2.1.0"
CC_ATTENTION = "mmcv-2.1.0/mmcv/ops/cc_attention.py"  # in the source distribution
CC_ATTENTION_SHA256 = "80affd0d84737acd7c9fd4c36caa8cae1cba504d14732b524e57004d6bf61067"


def cache_folder() -> Path:
    """Where fetched reference files are kept: ``$DNLSEG_CACHE``, else ``~/.cache/dnlseg``."""
    return Path(os.environ.get("DNLSEG_CACHE") or Path.home() / ".cache" / "dnlseg")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_cc_attention(cache: Path | None = None) -> Path:
    """mmcv 2.1.0's ``mmcv/ops/cc_attention.py``, from mmcv's source distribution on PyPI, cached; raises
    ``RuntimeError`` saying why when it cannot be had (no registry, pip failing, a file that is not the one pinned)."""
    target = (cache or cache_folder()) / "mmcv-2.1.0" / "cc_attention.py"
    if target.is_file() and sha256(target.read_bytes()) == CC_ATTENTION_SHA256:
        return target
    with tempfile.TemporaryDirectory(prefix="dnlseg-mmcv-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("setuptools<70\n")  # mmcv's setup.py imports pkg_resources
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", MMCV_SDIST]
        result = subprocess.run(
            [*command, "--dest", folder, "--quiet"],
            env={**os.environ, "PIP_CONSTRAINT": str(constraints)},
            capture_output=True,
            text=True,
            check=False,
        )
        tarballs = list(Path(folder).glob("mmcv-2.1.0.tar.gz"))
        if result.returncode or not tarballs:
            said = " ".join((result.stderr or result.stdout).split()[-40:])
            raise RuntimeError(
                f"could not download {MMCV_SDIST}'s source distribution, which holds the CCNet parity oracle "
                f"{CC_ATTENTION}: `{' '.join(command)}` exited {result.returncode}: {said}"
            )
        with tarfile.open(tarballs[0]) as archive:
            member = archive.extractfile(CC_ATTENTION)
            if member is None:
                raise RuntimeError(f"{CC_ATTENTION} in {tarballs[0]} is not a regular file")
            data = member.read()
    if sha256(data) != CC_ATTENTION_SHA256:
        raise RuntimeError(f"{CC_ATTENTION} of {MMCV_SDIST} has SHA-256 {sha256(data)}, not {CC_ATTENTION_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def criss_cross_attention(path: Path | None = None) -> type:
    """mmcv 2.1.0's ``CrissCrossAttention`` class, imported from its own file (``fetch_cc_attention``)."""
    name = "mmcv.ops.cc_attention"
    if name not in sys.modules:
        import_mmseg()  # mmcv.cnn (its Scale) and mmengine's registry, which the file imports
        source = path or fetch_cc_attention()
        spec = importlib.util.spec_from_file_location(name, source)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot import {source} as {name}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].CrissCrossAttention


class Harness(nn.Module):
    """mmseg's modules registered under mmseg's own names (so the state dict has mmseg's keys), run by ``run`` as
    mmseg's head runs them."""

    def __init__(self, run, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.run = run

    def forward(self, *inputs):
        return self.run(*inputs)


def block_module(name: str, channels: int) -> nn.Module:
    """mmseg 1.2.2's module that ``dnlseg.context.BLOCKS[name]`` mirrors, for a C = ``channels`` head with the
    channel ratios of ``BLOCKS[name].channel_args`` and mmseg's Cityscapes configs (BatchNorm, ReLU)."""
    import_mmseg()
    from mmseg.models.decode_heads import ann_head, da_head, ema_head, isa_head, ocr_head

    norm = {"conv_cfg": None, "norm_cfg": {"type": "BN", "requires_grad": True}, "act_cfg": {"type": "ReLU"}}
    pyramid = {"query_scales": (1,), "key_pool_scales": (1, 3, 6, 8)}
    if name == "pam":
        return da_head.PAM(channels, channels // 8)
    if name == "cam":
        return da_head.CAM()
    if name == "cc":
        cca = criss_cross_attention()(channels)

        def recurrent(x):  # CCHead.forward's loop, recurrence 2
            for _ in range(2):
                x = cca(x)
            return x

        return Harness(
            recurrent, query_conv=cca.query_conv, key_conv=cca.key_conv, value_conv=cca.value_conv, gamma=cca.gamma
        )
    if name == "apnb":
        return ann_head.APNB(in_channels=channels, channels=channels // 2, out_channels=channels, **pyramid, **norm)
    if name == "afnb":
        low, project = channels // 2, max(channels // 8, 1)
        return ann_head.AFNB(low, channels, project, channels, **pyramid, **norm)
    heads = {"num_classes": 2, "in_channels": channels, "channels": channels, "norm_cfg": norm["norm_cfg"]}
    if name == "isa":
        head = isa_head.ISAHead(isa_channels=channels // 2, down_factor=(8, 8), **heads)
        strip_head(head, "in_conv")
        head.out_conv = Harness(lambda x: x[:, :channels])  # out_conv(cat[isa, residual]) -> the ISA part
        return Harness(lambda x: head([x]), global_relation=head.global_relation, local_relation=head.local_relation)
    if name == "ema":
        head = ema_head.EMAHead(ema_channels=channels, num_bases=64, num_stages=3, concat_input=False, **heads)
        strip_head(head, "ema_in_conv", "bottleneck")
        return Harness(
            lambda x: head([x]),
            ema_mid_conv=head.ema_mid_conv,
            ema_module=head.ema_module,
            ema_out_conv=head.ema_out_conv,
        )
    if name == "ocr":
        gather = ocr_head.SpatialGatherModule(1)
        block = ocr_head.ObjectAttentionBlock(channels, channels // 2, 1, **norm)
        return Harness(
            lambda x, logits: block(x, gather(x, logits)), spatial_gather_module=gather, object_context_block=block
        )
    raise KeyError(f"no mmseg module for block {name!r}")


def strip_head(head: Any, *identities: str) -> None:
    """Leave a decode head's layers around its block out: ``identities`` and the classifier become the identity.
    ``head``: an mmseg decode head (mmseg has no type information; its ``dropout`` may be None)."""
    for name in identities:
        setattr(head, name, nn.Identity())
    head.dropout = None
    head.conv_seg = nn.Identity()


@torch.no_grad()
def randomize_block(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere in a block, including what mmseg initialises to constants: BatchNorm weights,
    biases and running statistics, mmcv's ``Scale`` gammas (0 at init) and zero-initialised output convs."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            child.weight.copy_(torch.randn(child.weight.shape, generator=generator) / child.weight[0].numel() ** 0.5)
            if child.bias is not None:
                child.bias.copy_(torch.randn(child.bias.shape, generator=generator) * 0.1)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            if child.weight is not None and child.bias is not None:  # affine
                child.weight.copy_(uniform(child.weight.shape, 0.5, 1.5))
                child.bias.copy_(torch.randn(child.bias.shape, generator=generator) * 0.1)
            if child.running_mean is not None and child.running_var is not None:  # track_running_stats
                child.running_mean.copy_(torch.randn(child.running_mean.shape, generator=generator) * 0.1)
                child.running_var.copy_(uniform(child.running_var.shape, 0.5, 1.5))
        elif type(child).__name__ == "Scale":
            scale = child.get_parameter("scale")  # mmcv's Scale: one learned scalar (mmcv has no type information)
            scale.copy_(uniform(scale.shape, 0.5, 1.0))
        elif isinstance(child, nn.LayerNorm) and child.elementwise_affine:  # GC's transform: 1 and 0 at init
            child.weight.copy_(uniform(child.weight.shape, 0.5, 1.5))
            child.bias.copy_(torch.randn(child.bias.shape, generator=generator) * 0.1)
    return module


def decode_head(config: Any, num_classes: int = 5, shrink: int = 16) -> nn.Module:
    """mmseg's decode head of ``config`` (a decode head's config dict, e.g. ``load_config(name).model.decode_head``)
    with every width divided by ``shrink`` (``in_channels``, ``channels`` and the heads' ``*_channels``), BatchNorm,
    ``num_classes`` outputs; CCHead with mmcv 2.1.0's ``CrissCrossAttention``."""
    import_mmseg()
    from mmseg.registry import MODELS

    config = copy.deepcopy(dict(config))
    for key, value in config.items():
        if key.endswith("channels"):
            config[key] = [v // shrink for v in value] if isinstance(value, list | tuple) else value // shrink
    config.update(num_classes=num_classes, norm_cfg={"type": "BN", "requires_grad": True})
    if config["type"] == "CCHead":
        use_criss_cross_attention()
    return MODELS.build(config)
