"""What one run of the ablation trains: its head, and the command-line overrides that select it.

``HEADS`` is the one table ``--variants`` names come from. It holds every context head of ``dnlseg.context.VARIANTS``
(a block inside ``ContextHead``, ``model.network.context``) and the heads of docs/science.md section 7: CCNet's
criss-cross block inside the same context head, and the heads with layouts of their own (``model.network.
decode_head``: DANet, ANN, ISA, EMANet, OCR; ``dnlseg.models.heads``). A run is

    dnlseg fit -c base.yaml -c <setting>.yaml <HEADS[name].overrides()>

Each head's arguments are its synthetic recipe's (``configs/synthetic/<recipe>.yaml``: mmseg 1.2.2's ratios) unless
``deviation`` says why the ablation's small map needs another value; the base recipe's head is 64 channels wide on
an 8 x 8 feature map (64 px images, output stride 8).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from dnlseg.context import VARIANTS, ContextBlock, CrissCrossAttention2d, Variant
from dnlseg.models.heads import ANNHead, DAHead, EMAHead, ISAHead, OCRHead


@dataclass(frozen=True)
class Head:
    """A head the ablation trains.

    Attributes:
        label: display name (report, figures).
        block: the context head's block (``model.network.context``); None for the baseline or a ``decode_head``.
        decode_head: a head of its own layout (``model.network.decode_head``); None: ``ContextHead`` around ``block``.
        init_args: the arguments of ``block`` or ``decode_head`` besides the widths.
        recipe: its synthetic recipe, ``configs/synthetic/<recipe>.yaml`` (None: a variant without one).
        deviation: where ``init_args`` differ from the recipe's, and why; "" when they do not.
    """

    label: str
    block: type[ContextBlock] | None = None
    decode_head: type[nn.Module] | None = None
    init_args: Mapping[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    deviation: str = ""

    def __post_init__(self) -> None:
        if self.block is not None and self.decode_head is not None:
            raise ValueError(f"{self.label}: a decode_head has blocks of its own; give block or decode_head")

    @classmethod
    def of_variant(cls, variant: Variant, recipe: str | None = None) -> Head:
        return cls(variant.label, variant.block, None, dict(variant.init_args), recipe)

    def network_options(self) -> dict[str, dict[str, Any] | None]:
        """``{"context": ..., "decode_head": ...}``: the two ``model.network`` entries this head sets (one is None)."""
        chosen = self.block or self.decode_head
        package = "dnlseg.context" if self.block is not None else "dnlseg.models.heads"
        entry = None
        if chosen is not None:
            entry = {"class_path": f"{package}.{chosen.__name__}", "init_args": dict(self.init_args)}
        return {"context": entry if self.block else None, "decode_head": entry if self.decode_head else None}

    def overrides(self) -> list[str]:
        """The LightningCLI arguments that put this head in a recipe (over the base recipe's context block)."""
        return [f"--model.network.{key}={json.dumps(value)}" for key, value in self.network_options().items()]


VARIANT_RECIPES = {"baseline": "baseline", "nl": "nl", "dnl": "dnl", "gc": "gc"}  # configs/synthetic/<name>.yaml

HEADS: dict[str, Head] = {name: Head.of_variant(v, VARIANT_RECIPES.get(name)) for name, v in VARIANTS.items()} | {
    "danet": Head("DANet (PAM + CAM)", decode_head=DAHead, init_args={"pam_reduction": 8}, recipe="danet"),
    "ccnet": Head("CCNet", CrissCrossAttention2d, init_args={"reduction": 8, "recurrence": 2}, recipe="ccnet"),
    "annnet": Head(
        "ANN (AFNB + APNB)",
        decode_head=ANNHead,
        init_args={"reduction": 2, "pool_scales": [1, 3, 6, 8]},
        recipe="annnet",
    ),
    "isanet": Head(
        "ISA (long + short range)",
        decode_head=ISAHead,
        init_args={"reduction": 2, "group_size": [4, 4]},
        recipe="isanet",
        deviation="group_size [4, 4], not mmseg's [8, 8]: on the 8 x 8 map one 8 x 8 tile covers the whole map, so "
        "the long-range stage's softmax would run over a single key (its own pixel) and learn nothing; with 4 x 4 "
        "tiles each long-range group has 4 keys and each short-range tile 16",
    ),
    "emanet": Head(
        "EMANet",
        decode_head=EMAHead,
        init_args={"num_bases": 64, "num_stages": 3, "momentum": 0.1},
        recipe="emanet",
    ),
    "ocrnet": Head("OCR", decode_head=OCRHead, init_args={"reduction": 2}, recipe="ocrnet"),
}
# the heads of docs/science.md section 7, in the order of its table
SECTION_7 = ("danet", "ccnet", "annnet", "isanet", "emanet", "ocrnet")


# what each per-block number of ``metrics.BLOCK_SUMMARY`` needs of a block: the analysis (``dnlseg.context.ANALYSES``)
# whose scalars it reads, and which of the block's terms
NEEDS = {
    "ratio": ("logit_gradients", ("pairwise", "unary", "combine")),
    "ratio_late": ("logit_gradients", ("pairwise", "unary", "combine")),
    "cross": ("cross_sensitivity", ("pairwise", "unary", "combine")),
    "cross_late": ("cross_sensitivity", ("pairwise", "unary", "combine")),
    "pairwise_category": ("category_consistency", ("pairwise",)),
    "unary_boundary": ("boundary_consistency", ("unary",)),
}
NO_TERM = {
    "pairwise": "the block has no pairwise term",
    "unary": "the block has no unary term",
    "combine": "its weights are no function of its pairwise and unary logits",
}


@dataclass(frozen=True)
class BlockFacts:
    """What the report says of one context block besides its numbers.

    Attributes:
        keys: the keys of each query's softmax, in words (from the block's ``CapturedAttention.keys``).
        undefined: {``metrics.BLOCK_SUMMARY`` key: why the callbacks log no such number for this block} -- the
            block's ``undefined_analyses``, an analysis not computed on its keys (``unmeasured``), or a term it lacks.
        column_sum: its unary-logit gradient is the column sum of its pairwise-logit gradient, dL/du_j = sum_i
            dL/dp_ij (one softmax of p_ij + u_j: docs/science.md section 8), checked on random logits.
        queries_per_key: n, the most queries whose softmax holds one key (per image); with ``column_sum``,
            ||dL/du|| <= sqrt(n) ||dL/dp|| (Cauchy-Schwarz on each column).
    """

    keys: str
    undefined: dict[str, str]
    column_sum: bool = False
    queries_per_key: int = 0


def column_sum(call: Any) -> bool:
    """Whether ``call.combine``'s unary gradient is the column sum of its pairwise gradient (float64, random p, u
    and upstream gradient on every query row): true for one softmax of p_ij + u_j over each query's keys."""
    import torch

    if call.combine is None or call.pairwise_query is None or call.unary_logits is None:
        return False
    generator = torch.Generator().manual_seed(0)
    rows, keys = call.query_size[0] * call.query_size[1], call.key_size[0] * call.key_size[1]
    p = torch.randn(1, rows, keys, generator=generator, dtype=torch.float64, requires_grad=True)
    u = torch.randn(1, 1, keys, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, rows, keys, generator=generator, dtype=torch.float64)
    grad_p, grad_u = torch.autograd.grad(call.combine(p, u, None), (p, u), upstream)
    return bool(torch.allclose(grad_u, grad_p.sum(1, keepdim=True), rtol=1e-9, atol=1e-12))


def queries_per_key(call: Any) -> int:
    """The most query rows of one image whose softmax holds one key (every row, when each query sees every key)."""
    mask = call.key_mask(None)
    return call.query_size[0] * call.query_size[1] if mask is None else int(mask[0].sum(0).max())


def key_words(call: Any) -> str:
    """The key set of a captured call in words: "all 64 pixels", "15 of 64 pixels", "110 pyramid cells"."""
    keys = call.key_set
    total = call.key_size[0] * call.key_size[1]
    if keys.kind == "grid":
        return f"all {total} pixels"
    if keys.kind == "subset":
        counts = sorted({int(c) for c in keys.mask(None)[0].sum(-1).tolist()})
        return f"{'-'.join(map(str, counts))} of {total} pixels"
    return f"{total} {getattr(keys, 'what', 'tokens')}"


OFF_PATH = (
    "its captured attention output is not on the path to the network's output (no dL/dy reaches it), so "
    "SeparationProbe computes nothing for it; the block must publish the output tensor its forward goes on with"
)


def gradient_reaches(loss: Any, calls: Mapping[str, Any]) -> dict[str, bool]:
    """{block: whether d ``loss`` / d ``call.output`` exists}: False for an output without a graph (EMA's) and for
    one that ``loss`` does not depend on (a copy made for the capture after the forward went on without it)."""
    import torch

    traced = [c.output for c in calls.values() if c.output.requires_grad]
    grads = iter(torch.autograd.grad(loss, traced, allow_unused=True, retain_graph=True) if traced else [])
    return {name: bool(c.output.requires_grad) and next(grads) is not None for name, c in calls.items()}


def describe_blocks(config: Path) -> dict[str, BlockFacts]:
    """{block: its facts} in the network's order, for the model of a run's ``config.yaml``: built (random weights),
    one eval forward of a random image of the config's size inside ``capture_attention`` (with gradients, to see
    whether dL/dy reaches each captured output), and the reasons the callbacks (``SeparationProbe``,
    ``AttentionConsistency``) give for what they do not log."""
    import torch

    from dnlseg.callbacks.attention_capture import undefined_analyses, unmeasured
    from dnlseg.cli.export import build
    from dnlseg.context import capture_attention, find_context_blocks

    model = build(config, []).model
    network = model.network
    size = int(yaml.safe_load(config.read_text())["data"]["init_args"].get("image_size", 64))
    network.eval()
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with capture_attention(network, max_calls=1) as captured:
        logits = network(image).logits
    calls = {name: captured[name][0] for name in find_context_blocks(network)}
    reached = gradient_reaches(logits.sum(), calls)
    facts = {}
    for name, call in calls.items():
        has = {"pairwise": call.pairwise_query is not None, "unary": call.unary_logits is not None}
        has["combine"] = call.combine is not None
        undefined = {}
        for quantity, (analysis, terms) in NEEDS.items():
            lacking = [NO_TERM[t] for t in terms if not has[t]]
            reason = undefined_analyses(network, analysis).get(name) or unmeasured(call, analysis)
            if not reason and analysis in ("logit_gradients", "cross_sensitivity") and not reached[name]:
                reason = OFF_PATH
            if lacking or reason:
                undefined[quantity] = lacking[0] if lacking else str(reason)
        facts[name] = BlockFacts(key_words(call), undefined, column_sum(call), queries_per_key(call))
    return facts
