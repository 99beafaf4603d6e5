"""mmsegmentation checkpoints and ImageNet weights in dnlseg's key layout (docs/science.md sections 6.1 and 7).

mmseg 1.2.2's model-zoo files hold ``{"meta": ..., "state_dict": ...}`` (older ones also ``"optimizer"``). Their
keys, and the dnlseg ``SegmentationNetwork`` keys they become (``encoder`` = smp's ``tu-resnet50c`` /
``tu-resnet101c``, timm's deep-stem ResNet, the same network as mmseg's ``ResNetV1c``)::

    backbone.stem.{0,1,3,4,6}.*            encoder.model.conv1.{0,1,3,4,6}.*   deep stem: conv BN, conv BN, conv
    backbone.stem.7.*                      encoder.model.bn1.*                 the stem's last BN
    backbone.layer{1-4}.<i>.*              encoder.model.layer{1-4}.<i>.*      bottlenecks: the same names in both
    decode_head.*                          decode_head.*                       through the heads' ``mmseg_names``
    auxiliary_head.*                       aux_head.*                          FCN aux head on layer3
    decode_head.0.* / decode_head.1.*      aux_head.* / decode_head.*          OCR's cascade: FCNHead, then OCRHead

The decode and aux heads are mapped from the model the config built: each of our keys is translated through the
``mmseg_names`` of the modules on its path (a head's, then a block's: ``mmseg_key``), e.g. for NLHead / DNLHead::

    decode_head.convs.0.{conv,bn}.*        decode_head.conv_in.{0,1}.*         3x3 conv 2048 -> 512 + BN
    decode_head.<block>.g.conv.*           decode_head.context.value.*         <block>: the block's
    decode_head.<block>.theta.conv.*       decode_head.context.query.*             ``mmseg_attribute``: nl_block
    decode_head.<block>.phi.conv.*         decode_head.context.key.*               (NLHead), dnl_block (DNLHead),
    decode_head.dnl_block.conv_mask.*      decode_head.context.unary.*             gc_block (GCHead), cca (CCHead)
    decode_head.<block>.conv_out.conv.*    decode_head.context.out.*           C' -> C, no bias
    decode_head.<block>.conv_out.bn.*      decode_head.context.out_norm.*
    decode_head.convs.1.{conv,bn}.*        decode_head.conv_out.{0,1}.*
    decode_head.conv_cat.{conv,bn}.*       decode_head.fuse.{0,1}.*            concat with the input, 3x3 conv
    decode_head.conv_seg.*                 decode_head.classifier.*
    auxiliary_head.convs.0.{conv,bn}.*     aux_head.conv.{0,1}.*               FCN aux head on layer3
    auxiliary_head.conv_seg.*              aux_head.classifier.*

and DAHead, ANNHead, ISAHead, EMAHead and OCRHead, whose layers carry mmseg's names, through their blocks' names
(``dnlseg.context``: e.g. ISA's ``attention.long_range.query`` is ``global_relation.query_project``). mmseg's FCNHead
with two convs and ``concat_input`` (the context-free control) is the context head without a block. A file of a head
dnlseg does not read (``MMSEG_HEADS``: PSANet, SegFormer, PSPNet, ...) is refused from its keys alone
(``check_supported_head``), before any model is built or any step runs. mmseg's ImageNet files
(``resnet50_v1c-2cccc1ad.pth``, ``resnet101_v1c-e67eebb6.pth``) hold the backbone keys without ``backbone.``
(``stem.0.weight``, ``layer1.0.conv1.weight``, ..., ``fc.*``).

A Lightning trainer reads an mmseg file through ``dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO`` (every
shipped config's ``trainer.plugins``), which gives it the Lightning version key and marks it (``MMSEG_KEY``); the
LightningModule's ``on_load_checkpoint`` then maps the keys with ``mmseg_state_dict_for`` against the model the
config built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor, nn

from dnlseg.checkpoints.weight_files import check_state_dict_fits, read_torch_file
from dnlseg.context.disentangled_non_local import DisentangledNonLocal2d
from dnlseg.context.non_local import NonLocal2d
from dnlseg.context.non_local_base import NonLocalBase
from dnlseg.errors import CheckpointMismatchError, WeightFileError

MMSEG_KEY = "mmseg_checkpoint"  # what a Lightning checkpoint dict read from an mmseg file carries: path and meta
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
STATE_DICT_LAYOUTS = ("state_dict", "model")  # checkpoints that nest their weights under one of these keys

# (mmseg prefix, dnlseg prefix) pairs; the first matching prefix of a key renames it.
RESNET_V1C_KEYS = (  # mmseg ResNetV1c -> timm's deep-stem ResNet (the module ``model`` of smp's ``tu-`` encoder)
    ("stem.0.", "model.conv1.0."),
    ("stem.1.", "model.conv1.1."),
    ("stem.3.", "model.conv1.3."),
    ("stem.4.", "model.conv1.4."),
    ("stem.6.", "model.conv1.6."),
    ("stem.7.", "model.bn1."),
    *((f"layer{i}.", f"model.layer{i}.") for i in range(1, 5)),
)
CONTEXT_HEAD_NAMES = {  # ContextHead's mmseg_names: mmseg's FCNHead(num_convs=2, concat_input=True), NLHead, DNLHead
    "conv_in.0": "convs.0.conv",
    "conv_in.1": "convs.0.bn",
    "conv_out.0": "convs.1.conv",
    "conv_out.1": "convs.1.bn",
    "fuse.0": "conv_cat.conv",
    "fuse.1": "conv_cat.bn",
    "classifier": "conv_seg",
}
FCN_HEAD_NAMES = {"conv.0": "convs.0.conv", "conv.1": "convs.0.bn", "classifier": "conv_seg"}  # the aux FCNHead's


def prefix_rules(names: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """(mmseg prefix, dnlseg prefix) rules from a module's ``mmseg_names`` (our submodule -> mmseg's)."""
    return tuple((f"{theirs}.", f"{ours}.") for ours, theirs in names.items())


HEAD_KEYS = prefix_rules(CONTEXT_HEAD_NAMES)  # mmseg NLHead / DNLHead / FCNHead(2 convs, concat_input) -> ContextHead
BLOCK_KEYS = prefix_rules(NonLocalBase.mmseg_names)  # mmseg NonLocal2d / DisentangledNonLocal2d -> dnlseg's blocks
AUX_KEYS = prefix_rules(FCN_HEAD_NAMES)  # mmseg FCNHead(num_convs=1, concat_input=False) -> FCNHead
MMSEG_BLOCKS = {NonLocal2d.mmseg_attribute: "NLHead", DisentangledNonLocal2d.mmseg_attribute: "DNLHead"}
# The NL / DNL / FCN layout as fixed rules, without a model (``dnlseg convert``); a model maps through ``mmseg_key``.
SEGMENTOR_KEYS = (
    *((f"backbone.{a}", f"encoder.{b}") for a, b in RESNET_V1C_KEYS),
    *((f"decode_head.{block}.{a}", f"decode_head.context.{b}") for block in MMSEG_BLOCKS for a, b in BLOCK_KEYS),
    *((f"decode_head.{a}", f"decode_head.{b}") for a, b in HEAD_KEYS),
    *((f"auxiliary_head.{a}", f"aux_head.{b}") for a, b in AUX_KEYS),
)
CASCADE = ("decode_head.1.", "decode_head.0.")  # OCR's CascadeEncoderDecoder: (the OCR head, the FCN stage before it)
CONTEXT_ATTRIBUTES = ("nl_block", "dnl_block", "gc_block", "cca")  # the blocks of mmseg's FCNHead-layout heads


@dataclass(frozen=True)
class MmsegHead:
    """A decode head of mmseg 1.2.2, told apart by the key prefixes only its checkpoints have (all of ``markers``).

    ``unsupported``: why dnlseg has no counterpart (the file is refused before anything runs); None: dnlseg reads
    it (``configs/cityscapes/`` has a recipe mirroring its Cityscapes config)."""

    head: str  # mmseg's class, e.g. "DAHead"
    network: str  # the model's name, e.g. "DANet"
    markers: tuple[str, ...]
    unsupported: str | None = None


# First match wins: heads that contain another's modules (UPerHead a PSP module, SegFormer an FCN's convs) come first.
MMSEG_HEADS = (
    MmsegHead("PSAHead", "PSANet", ("decode_head.reduce.", "decode_head.proj."), "its PSAMask is a compiled op"),
    MmsegHead(
        "SegformerHead",
        "SegFormer",
        ("decode_head.fusion_conv.", "decode_head.convs.0."),
        "an all-MLP head on a MixVisionTransformer backbone",
    ),
    MmsegHead("UPerHead", "UPerNet", ("decode_head.lateral_convs.", "decode_head.fpn_bottleneck."), "a pyramid head"),
    MmsegHead("PSPHead", "PSPNet", ("decode_head.psp_modules.",), "its pyramid pooling module"),
    MmsegHead("DepthwiseSeparableASPPHead", "DeepLabV3+", ("decode_head.c1_bottleneck.",), "its ASPP and decoder"),
    MmsegHead("ASPPHead", "DeepLabV3", ("decode_head.aspp_modules.",), "its ASPP module"),
    MmsegHead("NLHead", "NonLocalNet", ("decode_head.nl_block.",)),
    MmsegHead("DNLHead", "DNLNet", ("decode_head.dnl_block.",)),
    MmsegHead("GCHead", "GCNet", ("decode_head.gc_block.",)),
    MmsegHead("CCHead", "CCNet", ("decode_head.cca.",)),
    MmsegHead("DAHead", "DANet", ("decode_head.pam.", "decode_head.cam.")),
    MmsegHead("ANNHead", "ANN", ("decode_head.fusion.stages.", "decode_head.context.stages.")),
    MmsegHead("ISAHead", "ISANet", ("decode_head.global_relation.", "decode_head.local_relation.")),
    MmsegHead("EMAHead", "EMANet", ("decode_head.ema_module.",)),
    MmsegHead("OCRHead", "OCRNet", (f"{CASCADE[0]}object_context_block.", f"{CASCADE[1]}convs.0.")),
    MmsegHead("FCNHead", "FCN", ("decode_head.convs.0.",)),
)
SUPPORTED = ", ".join(h.head for h in MMSEG_HEADS if h.unsupported is None)


def identify_head(state: dict[str, Any]) -> MmsegHead | None:
    """The ``MMSEG_HEADS`` entry whose markers all stand in ``state``'s keys; None for a head not in the table."""
    keys = [k for k in state if isinstance(k, str)]
    for entry in MMSEG_HEADS:
        if all(any(k.startswith(marker) for k in keys) for marker in entry.markers):
            return entry
    return None


def check_supported_head(state: dict[str, Any], source: str) -> MmsegHead:
    """The head of the mmseg checkpoint ``state`` (``source``: its path, for the message), or
    ``CheckpointMismatchError`` in one line when dnlseg does not read that head, naming it and the keys that show it."""
    entry = identify_head(state)
    if entry is not None and entry.unsupported is None:
        return entry
    if entry is None:
        what, why = "a checkpoint of a decode head dnlseg does not know", "an unknown decode head"
        keys = [k for k in state if isinstance(k, str) and k.startswith("decode_head.") and ".conv_seg." not in k]
        if not keys:
            what, why = "a checkpoint without a decode head", "no decode_head.* keys"
    else:
        what, why = f"a {entry.network} ({entry.head}) checkpoint", str(entry.unsupported)
        keys = [k for k in state if isinstance(k, str) and k.startswith(entry.markers)]
    found = f"; {len(keys)} checkpoint key(s) of a module dnlseg has no counterpart for: {first(keys)}" if keys else ""
    raise CheckpointMismatchError(
        f"the mmsegmentation checkpoint {source} is {what}: dnlseg does not support that head ({why}){found}; "
        f"dnlseg reads mmseg's {SUPPORTED} on ResNetV1c-50/101 (configs/cityscapes/ mirrors their configs)"
    )


def rename(key: str, rules) -> str | None:
    """``key`` with its first matching prefix replaced, or None when no rule matches."""
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def rename_all(state: dict[str, Any], rules) -> tuple[dict[str, Any], list[str]]:
    """(renamed entries, keys no rule matches)."""
    renamed, unmatched = {}, []
    for key, value in state.items():
        new = rename(key, rules)
        if new is None:
            unmatched.append(key)
        else:
            renamed[new] = value
    return renamed, unmatched


def nested_state_dict(obj: Any) -> dict[str, Any] | None:
    """The weights of a loaded file: the dict itself, or the one under ``state_dict`` / ``model``."""
    if not isinstance(obj, dict):
        return None
    for key in STATE_DICT_LAYOUTS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def is_mmseg_checkpoint(obj: Any) -> bool:
    """A file saved by mmseg/mmengine: not a Lightning checkpoint, weights under ``backbone.`` / ``decode_head.``."""
    if not isinstance(obj, dict) or LIGHTNING_VERSION_KEY in obj:
        return False
    state = nested_state_dict(obj)
    return state is not None and any(isinstance(k, str) and k.startswith(("backbone.", "decode_head.")) for k in state)


def as_lightning_checkpoint(obj: dict, path: str | Path) -> dict:
    """What Lightning's checkpoint connector needs from a file without Lightning keys: the version key (its
    migrations read it before any hook runs) and ``state_dict``; the mmseg weights stay as they are, marked
    with ``MMSEG_KEY`` for ``on_load_checkpoint``. No loop, optimiser or callback state: nothing to resume."""
    return {
        LIGHTNING_VERSION_KEY: lightning.__version__,
        "state_dict": nested_state_dict(obj),
        MMSEG_KEY: {"path": str(path), "meta": obj.get("meta")},
    }


def mmseg_iteration(meta: Any) -> int | None:
    """The training iteration an mmseg file was saved at (mmcv's runner writes ``meta["iter"]``), None without one."""
    step = meta.get("iter") if isinstance(meta, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def check_supported_file(path: str | Path) -> None:
    """``check_supported_head`` on the keys of the file ``path``, read without its tensors (``torch.load`` with
    ``mmap``), so that a zoo file of a head dnlseg does not read is refused before any model or data is built. A file
    that is no mmseg checkpoint, or that cannot be read this way (torch's legacy format), passes: loading it later
    says what it is."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (anything unreadable is reported where the file is loaded)
        return
    state = nested_state_dict(obj)
    if state is not None and is_mmseg_checkpoint(obj):
        check_supported_head(state, str(path))


def describe_mmseg(state: dict[str, Any]) -> str:
    """E.g. ``DNLHead, ResNetV1c-101 backbone, 19 classes, FCN aux head`` from the keys and shapes alone."""
    entry = identify_head(state)
    parts = [entry.head if entry is not None else "an unknown decode head"]
    if entry is not None and entry.head == "OCRHead":
        parts[0] = "OCRHead cascade on an FCNHead"
    layer3 = {k.split(".")[2] for k in state if isinstance(k, str) and k.startswith("backbone.layer3.")}
    depth = {6: "50", 23: "101", 36: "152"}.get(len(layer3))
    if any(isinstance(k, str) and k.startswith("backbone.stem.") for k in state) and depth:
        parts.append(f"ResNetV1c-{depth} backbone")
    elif any(isinstance(k, str) and k.startswith("backbone.layers.0.0.projection.") for k in state):
        parts.append("MixVisionTransformer backbone")
    classifier = state.get("decode_head.conv_seg.weight", state.get(f"{CASCADE[0]}conv_seg.weight"))
    if isinstance(classifier, Tensor):
        parts.append(f"{classifier.shape[0]} classes")
    if any(isinstance(k, str) and k.startswith("auxiliary_head.") for k in state):
        parts.append("FCN aux head")
    return ", ".join(parts)


def describe_model(model: nn.Module) -> str:
    """E.g. ``encoder tu-resnet50c, context DisentangledNonLocal2d, 19 classes`` (the context head) or ``encoder
    tu-resnet50c, decode head DAHead, 19 classes`` for the config's model."""
    hparams = getattr(model, "hparams", {})
    network = getattr(model, "network", model)
    head = getattr(network, "decode_head", None)
    encoder = getattr(getattr(network, "encoder_options", None), "name", "?")
    if hasattr(head, "context"):  # the context head
        context = getattr(head, "context", None)
        parts = [f"encoder {encoder}", f"context {type(context).__name__ if context is not None else '?'}"]
    else:
        parts = [f"encoder {encoder}", f"decode head {type(head).__name__}"]
    if "num_classes" in hparams:
        parts.append(f"{hparams['num_classes']} classes")
    return ", ".join(parts)


def mmseg_key(module: nn.Module, key: str) -> str:
    """Our state-dict ``key`` relative to ``module`` -> mmseg's, relative to the mmseg module ``module`` mirrors.

    The longest entry of ``module.mmseg_names`` that is a prefix of ``key`` renames it ("" where mmseg has no module
    at that level) and the rest is translated by the submodule it names, through that submodule's own names; without
    an entry the first name is kept and the rest goes to that submodule. ISA's head has ``{"attention": ""}``, its
    block ``{"long_range.query": "global_relation.query_project", ...}``: ``attention.long_range.query.conv.weight``
    -> ``global_relation.query_project.conv.weight``.
    """
    names = getattr(module, "mmseg_names", None) or {}
    for mine, theirs in sorted(names.items(), key=lambda item: -len(item[0])):
        if key == mine or key.startswith(mine + "."):
            rest = key[len(mine) + 1 :]
            child = submodule(module, mine)
            return dotted(theirs, mmseg_key(child, rest) if child is not None and rest else rest)
    name, _, rest = key.partition(".")
    child = submodule(module, name)
    return dotted(name, mmseg_key(child, rest) if child is not None and rest else rest)


def submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:  # a parameter or buffer, e.g. a block's gamma
        return None


def dotted(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def mmseg_key_map(model: nn.Module, prefix: str = "network.") -> dict[str, str]:
    """{mmseg key: ``model``'s key} for every entry of ``model.state_dict()`` under ``prefix`` that has an mmseg
    counterpart: ``model`` a ``SegmentationModule`` (keys ``network.*``) or, with ``prefix=""``, its network.

    The encoder's keys through ``RESNET_V1C_KEYS``, the heads' through ``mmseg_key``: the decode head under
    ``decode_head.`` and the aux head under ``auxiliary_head.``, or for a head that refines the aux head's logits
    (OCR: ``"coarse"`` in its ``inputs``) mmseg's cascade, ``decode_head.1.`` and ``decode_head.0.``."""
    network = model.get_submodule(prefix.rstrip(".")) if prefix else model
    head = getattr(network, "decode_head", None)
    cascade = "coarse" in getattr(head, "inputs", ())
    places = {
        "decode_head": CASCADE[0] if cascade else "decode_head.",
        "aux_head": CASCADE[1] if cascade else "auxiliary_head.",
    }
    backbone = [(ours, f"backbone.{theirs}") for theirs, ours in RESNET_V1C_KEYS]
    found: dict[str, str] = {}
    for key in network.state_dict():
        part, _, rest = key.partition(".")
        if part == "encoder":
            theirs = rename(rest, backbone)
        elif part in places:
            theirs = places[part] + mmseg_key(network.get_submodule(part), rest)
        else:
            theirs = None
        if theirs is not None:
            if theirs in found:  # a head whose mmseg_names send two of its keys to one of mmseg's
                raise ValueError(f"{found[theirs]} and {prefix}{key} both map to mmseg's {theirs}")
            found[theirs] = prefix + key
    return found


def mmseg_state_dict_for(model: nn.Module, state: dict[str, Any], source: str, prefix: str = "network.") -> dict:
    """The mmseg ``state`` renamed for ``model`` (a ``SegmentationModule``: keys ``network.*``; ``mmseg_key_map``).

    Raises ``CheckpointMismatchError`` naming ``source``: in one line for a head dnlseg does not read
    (``check_supported_head``); else what the checkpoint holds, what the config built, and one line per problem with
    the first keys that do not fit: checkpoint keys the model lacks (R101 into R50: ``layer3.6`` ...; another
    head's modules), model keys the checkpoint lacks (NL into DNL: the unary conv), shapes. A context block held
    under another name than the model's (``nl_block`` for a DNL block) is its own line, and its keys are compared
    as if named alike.
    """
    checked = check_supported_head(state, source)
    mapping = mmseg_key_map(model, prefix)
    own = model.state_dict()

    def compare(state: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str], list[str]]:
        """(renamed, checkpoint keys the model lacks, model keys the checkpoint lacks, differing shapes)."""
        renamed = {mapping[k]: v for k, v in state.items() if k in mapping}
        shapes = [
            f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in renamed.items()
            if isinstance(v, Tensor) and v.shape != own[k].shape
        ]
        return (
            renamed,
            [k for k in state if k not in mapping],
            [o for k, o in mapping.items() if k not in state],
            shapes,
        )

    renamed, extra, missing, shapes = compare(state)
    if not (extra or missing or shapes):
        return renamed
    lines = [
        f"the mmsegmentation checkpoint {source} ({describe_mmseg(state)}) does not fit the model built from "
        f"this config ({describe_model(model)}):"
    ]
    head = getattr(model.get_submodule(prefix.rstrip(".")) if prefix else model, "decode_head", None)
    theirs = block_attribute(state)
    mine = (getattr(head, "mmseg_names", None) or {}).get("context") if hasattr(head, "context") else None
    if theirs and mine and theirs != mine:  # e.g. NL into DNL: the blocks' keys compared as if named alike
        block = type(getattr(head, "context", None)).__name__
        lines.append(
            f"its context block is {checked.head}'s decode_head.{theirs}; the config's {block} is mmseg's {mine}"
        )
        _, extra, missing, shapes = compare(
            {k.replace(f"decode_head.{theirs}.", f"decode_head.{mine}.", 1): v for k, v in state.items()}
        )
    if extra:
        named = [f"{k} (-> {prefix}{new})" if (new := rename(k, SEGMENTOR_KEYS)) else k for k in extra]
        lines.append(f"{len(extra)} checkpoint key(s) the model does not have: {first(named)}")
    if missing:
        lines.append(f"{len(missing)} model key(s) the checkpoint does not have: {first(missing)}")
    if shapes:
        lines.append(f"{len(shapes)} shape(s) differ: {first(shapes)}")
    lines.append(
        f"dnlseg reads mmseg's {SUPPORTED} on ResNetV1c-50/101: use the recipe that mirrors the checkpoint's mmseg "
        "config (configs/cityscapes/, README: mmsegmentation models)"
    )
    raise CheckpointMismatchError("\n".join(lines))


def block_attribute(keys) -> str | None:
    """The ``CONTEXT_ATTRIBUTES`` entry under ``decode_head.`` that ``keys`` hold, or None."""
    return next((a for a in CONTEXT_ATTRIBUTES if any(str(k).startswith(f"decode_head.{a}.") for k in keys)), None)


def first(items: list[str], count: int = 5) -> str:
    return ", ".join(items[:count]) + (f", ... ({len(items) - count} more)" if len(items) > count else "")


def checkpoint_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """The weights of an mmseg model-zoo file or a dnlseg (Lightning) checkpoint, keyed for ``model`` (a
    ``SegmentationModule``) and checked to fit it; ``model.init_weights`` of a fit."""
    obj = read_torch_file(path, "model.init_weights")
    mmseg_state = nested_state_dict(obj)
    if mmseg_state is not None and is_mmseg_checkpoint(obj):
        return mmseg_state_dict_for(model, mmseg_state, str(path))
    if not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)):
        found = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
        raise WeightFileError(
            f"model.init_weights: {path} is neither a dnlseg checkpoint (a dict with 'state_dict' holding network.* "
            f"keys) nor an mmseg one ('state_dict' with backbone.* / decode_head.* keys); found {found}"
        )
    check_state_dict_fits(model, obj["state_dict"], source=f"checkpoint {path}")
    return obj["state_dict"]
