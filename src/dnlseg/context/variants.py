"""The two tables of context blocks (docs/science.md sections 3 and 7).

``VARIANTS``: the context heads the paper compares -- blocks that drop into ``ContextHead`` (conv, block, conv,
concat, classifier), named in configs by ``variant.context_config()`` (``model.network.context``; ``null`` for the
baseline). Tests (the block contract suite), benchmarks, the ablation experiment and the README's variant table
read it.

``BLOCKS``: the attention blocks of the other heads of the field (DANet, CCNet, ANN, ISA, EMANet, OCR), each as
mmsegmentation 1.2.2's module computes it. They are not ``VARIANTS``: AFNB takes two feature maps and OCR a coarse
segmentation besides the features, and DANet, ANN, ISA and OCR have head layouts of their own (issue #21's head
level); the contract suite, the parity tests and the block benchmark read this table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dnlseg.context.asymmetric_non_local import AsymmetricFusionNonLocal2d, AsymmetricPyramidNonLocal2d
from dnlseg.context.base import ContextBlock
from dnlseg.context.channel_attention import ChannelAttention2d
from dnlseg.context.criss_cross import CrissCrossAttention2d
from dnlseg.context.disentangled_non_local import DisentangledNonLocal2d
from dnlseg.context.expectation_maximization import ExpectationMaximizationAttention2d
from dnlseg.context.global_context import GlobalContext2d
from dnlseg.context.interlaced_sparse import InterlacedSparseAttention2d
from dnlseg.context.non_local import NonLocal2d
from dnlseg.context.object_context import ObjectContextAttention2d
from dnlseg.context.position_attention import PositionAttention2d


@dataclass(frozen=True)
class Variant:
    """A context head: its block class and arguments, and how the paper's table describes its two terms.

    Attributes:
        label: display name (reports, figures, README).
        block: the block class; None for the baseline (no block).
        init_args: keyword arguments of ``block`` besides ``in_channels``.
        pairwise: the pairwise term, in words.
        unary: the unary term, in words.
    """

    label: str
    block: type[ContextBlock] | None
    init_args: Mapping[str, Any] = field(default_factory=dict)
    pairwise: str = "-"
    unary: str = "-"

    def build(self, in_channels: int, **overrides: Any) -> nn.Module | None:
        """The block for ``in_channels`` (None for the baseline); ``overrides`` replace or add arguments."""
        if self.block is None:
            return None
        block: Callable[..., ContextBlock] = self.block  # a subclass: takes in_channels and its own arguments
        return block(in_channels, **{**self.init_args, **overrides})

    def context_config(self) -> dict[str, Any] | None:
        """``{"class_path": ..., "init_args": {...}}``: the value of ``model.network.context`` in a config (None:
        baseline)."""
        if self.block is None:
            return None
        class_path = f"dnlseg.context.{self.block.__name__}"
        return {"class_path": class_path, "init_args": dict(self.init_args)}


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("baseline", None),
    "nl": Variant("NL", NonLocal2d, {}, "plain q.k", "implicit (inside the softmax)"),
    "pairwise_nl": Variant("pairwise NL", DisentangledNonLocal2d, {"unary": None}, "whitened q.k, tau", "-"),
    "unary_nl": Variant("unary NL", DisentangledNonLocal2d, {"pairwise": False}, "-", "softmax(W_m x)"),
    "dnl": Variant("DNL", DisentangledNonLocal2d, {}, "whitened q.k, tau", "softmax(W_m x)"),
    "dnl_shared_key": Variant(
        "DNL, shared key", DisentangledNonLocal2d, {"unary": "shared_key"}, "whitened q.k, tau", "softmax(mu_q . k_j)"
    ),
    "gc": Variant("GC (GCNet)", GlobalContext2d, {}, "-", "softmax(W_k x), bottleneck transform"),
    "dnl_official": Variant(
        "DNL, official output",
        DisentangledNonLocal2d,
        {"output": "gamma"},
        "gamma * whitened q.k, tau",
        "softmax(W_m x)",
    ),
    "nl_fork": Variant(
        "NL + GC (mmdet fork)",
        NonLocal2d,
        {"whitening": "bn_like", "learn_temperature": True, "temperature_form": "softplus", "global_context": True},
        "q.k, bn-like whitened, softplus(t)",
        "implicit + a GC block beside",
    ),
}


def in_channels(channels: int) -> dict[str, int]:
    return {"in_channels": channels}


@dataclass(frozen=True)
class Block:
    """An attention block of docs/science.md section 7 and what it takes.

    Attributes:
        label: display name (reports, benchmark tables).
        paper: the paper and where in it the block is defined.
        block: the block class.
        inputs: what ``forward`` takes: ("x",), ("low", "high") (AFNB: keys from the stage-3 map, queries from the
            stage-4 map, mmseg's order) or ("x", "logits") (OCR: the features and a coarse segmentation).
        keys: the kind of key set of each query's softmax (``dnlseg.context.keys``): "grid", "subset" or "tokens".
        mmseg: the mmsegmentation 1.2.2 module it mirrors.
        channel_args: the channel arguments for a C-channel head, in the ratios of mmseg's Cityscapes configs.
        init_args: the other arguments (the paper's defaults when empty).
        identity_at_init: the block starts as the identity (a zero-initialised gamma on its output).
    """

    label: str
    paper: str
    block: type[nn.Module]
    inputs: tuple[str, ...]
    keys: str
    mmseg: str
    channel_args: Callable[[int], dict[str, int]] = in_channels
    init_args: Mapping[str, Any] = field(default_factory=dict)
    identity_at_init: bool = False

    def build(self, channels: int, **overrides: Any) -> nn.Module:
        """The block of a C = ``channels`` head; ``overrides`` replace or add arguments."""
        return self.block(**{**self.channel_args(channels), **self.init_args, **overrides})

    def example_inputs(
        self,
        batch: int,
        channels: int,
        size: tuple[int, int],
        classes: int = 19,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, ...]:
        """Random inputs of ``forward`` for a C = ``channels`` head on an (H, W) = ``size`` grid."""
        shapes = {"x": channels, "high": channels, "low": channels // 2, "logits": classes}
        return tuple(torch.randn(batch, shapes[name], *size, generator=generator, dtype=dtype) for name in self.inputs)


BLOCKS: dict[str, Block] = {
    "pam": Block(
        "DANet PAM",
        "Fu et al., CVPR 2019, Sec. 3.2",
        PositionAttention2d,
        ("x",),
        "grid",
        "da_head.PAM",
        identity_at_init=True,
    ),
    "cam": Block(
        "DANet CAM",
        "Fu et al., CVPR 2019, Sec. 3.3",
        ChannelAttention2d,
        ("x",),
        "tokens",
        "da_head.CAM",
        identity_at_init=True,
    ),
    "cc": Block(
        "CCNet criss-cross (R=2)",
        "Huang et al., ICCV 2019, Sec. 3.2",
        CrissCrossAttention2d,
        ("x",),
        "subset",
        "mmcv.ops.CrissCrossAttention x CCHead.recurrence",
        identity_at_init=True,
    ),
    "apnb": Block(
        "ANN APNB",
        "Zhu et al., ICCV 2019, Sec. 3.3",
        AsymmetricPyramidNonLocal2d,
        ("x",),
        "tokens",
        "ann_head.APNB",
    ),
    "afnb": Block(
        "ANN AFNB",
        "Zhu et al., ICCV 2019, Sec. 3.4",
        AsymmetricFusionNonLocal2d,
        ("low", "high"),
        "tokens",
        "ann_head.AFNB",
        lambda c: {"low_channels": c // 2, "high_channels": c, "channels": max(c // 8, 1)},
    ),
    "isa": Block(
        "ISA",
        "Huang et al., arXiv 1907.12273, Sec. 3",
        InterlacedSparseAttention2d,
        ("x",),
        "subset",
        "isa_head.ISAHead (global_relation, local_relation)",
    ),
    "ema": Block(
        "EMANet EMA",
        "Li et al., ICCV 2019, Sec. 3",
        ExpectationMaximizationAttention2d,
        ("x",),
        "tokens",
        "ema_head.EMAHead (ema_mid_conv, ema_module, ema_out_conv)",
    ),
    "ocr": Block(
        "OCR",
        "Yuan et al., ECCV 2020, Sec. 3.2",
        ObjectContextAttention2d,
        ("x", "logits"),
        "tokens",
        "ocr_head.SpatialGatherModule + ObjectAttentionBlock",
    ),
}


REFERENCE_WIDTH = 16  # channels of the reference blocks ``variant_of`` builds: a multiple of every default reduction


def variant_of(block: nn.Module) -> tuple[str, str]:
    """``(name, label)`` of the ``VARIANTS`` entry ``block`` is an instance of, e.g. ``("dnl", "DNL")``, for figures
    and file names; else of the ``BLOCKS`` entry of its class (``("cc", "CCNet criss-cross (R=2)")``); ``(class
    name, class name)`` for a block of no entry.

    Of the entries of the block's class, the most specific one whose arguments show in the block: where that
    entry's block differs from the class's default block (a submodule or parameter present or absent, of another
    class, or a setting such as ``unary_source``), ``block`` differs in the same way. Widths, temperatures and
    other arguments no entry sets are not compared.
    """
    settings = _settings(block)
    matching = [
        (name, distinguishing)
        # torch's stub declares Module.__hash__ for instances; a class is hashable
        for name, distinguishing in _distinguishing(type(block)).items()  # type: ignore[arg-type]
        if all(settings.get(k) == v for k, v in distinguishing.items())
    ]
    if not matching:
        entry = next(((key, b.label) for key, b in BLOCKS.items() if b.block is type(block)), None)
        return entry or (type(block).__name__, type(block).__name__)
    name, _ = max(matching, key=lambda match: len(match[1]))  # the most specific
    return name, VARIANTS[name].label


@functools.cache
def _distinguishing(block_class: type) -> dict[str, dict[str, Any]]:
    """{variant name: the settings in which its block differs from ``block_class``'s default one} for the variants
    of ``block_class``."""
    own = {name: variant for name, variant in VARIANTS.items() if variant.block is block_class}
    default = _settings(block_class(REFERENCE_WIDTH)) if own else {}
    found = {}
    for name, variant in own.items():
        built = variant.build(REFERENCE_WIDTH)
        assert built is not None  # variant.block is block_class
        settings = _settings(built)
        found[name] = {k: v for k, v in settings.items() if k not in default or default[k] != v}
    return found


def _settings(block: nn.Module) -> dict[str, Any]:
    """A block's configuration as it shows: each submodule's and parameter's class (None when absent) and each
    plain attribute (bool, number, string, None). Only what differs between two builds of a class is compared."""
    parts = {**block._modules, **block._parameters}
    settings: dict[str, Any] = {k: type(v).__name__ if v is not None else None for k, v in parts.items()}
    return settings | {k: v for k, v in vars(block).items() if isinstance(v, (bool, int, float, str, type(None)))}
