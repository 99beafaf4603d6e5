"""The one table of the context heads this project compares (docs/science.md section 3).

Tests (the block contract suite), benchmarks, the ablation experiment and the README's variant table all read
``VARIANTS``; a new variant is one entry here. ``variant.context_config()`` is the YAML value of
``model.context`` (``null`` for the baseline), ``variant.build(C)`` the block itself.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        return None if self.block is None else self.block(in_channels, **{**self.init_args, **overrides})

    def context_config(self) -> dict[str, Any] | None:
        """``{"class_path": ..., "init_args": {...}}``: the value of ``model.context`` in a config (None: baseline)."""
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
