"""The one table of the context heads this project compares (docs/science.md section 3).

Tests (the block contract suite), benchmarks, the ablation experiment and the README's variant table all read
``VARIANTS``; a new variant is one entry here. ``variant.context_config()`` is the YAML value of
``model.network.context`` (``null`` for the baseline), ``variant.build(C)`` the block itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dnlseg.context.base import ContextBlock
from dnlseg.context.disentangled_non_local import DisentangledNonLocal2d
from dnlseg.context.global_context import GlobalContext2d
from dnlseg.context.non_local import NonLocal2d


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


REFERENCE_WIDTH = 16  # channels of the reference blocks ``variant_of`` builds: a multiple of every default reduction


def variant_of(block: nn.Module) -> tuple[str, str]:
    """``(name, label)`` of the ``VARIANTS`` entry ``block`` is an instance of, e.g. ``("dnl", "DNL")``, for figures
    and file names; ``(class name, class name)`` for a block of no entry.

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
        return type(block).__name__, type(block).__name__
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
