"""mmsegmentation checkpoints and ImageNet weights in dnlseg's key layout (docs/science.md section 6.1).

mmseg 1.2.2's model-zoo files hold ``{"meta": ..., "state_dict": ...}`` (older ones also ``"optimizer"``). Their
keys, and the dnlseg ``SegmentationNetwork`` keys they become (``encoder`` = smp's ``tu-resnet50c`` /
``tu-resnet101c``, timm's deep-stem ResNet, the same network as mmseg's ``ResNetV1c``)::

    backbone.stem.{0,1,3,4,6}.*            encoder.model.conv1.{0,1,3,4,6}.*   deep stem: conv BN, conv BN, conv
    backbone.stem.7.*                      encoder.model.bn1.*                 the stem's last BN
    backbone.layer{1-4}.<i>.*              encoder.model.layer{1-4}.<i>.*      bottlenecks: the same names in both
    decode_head.convs.0.{conv,bn}.*        decode_head.conv_in.{0,1}.*         3x3 conv 2048 -> 512 + BN
    decode_head.<block>.g.conv.*           decode_head.context.value.*         <block>: nl_block (NLHead) or
    decode_head.<block>.theta.conv.*       decode_head.context.query.*             dnl_block (DNLHead)
    decode_head.<block>.phi.conv.*         decode_head.context.key.*
    decode_head.dnl_block.conv_mask.*      decode_head.context.unary.*         DNL's unary conv C -> 1
    decode_head.<block>.conv_out.conv.*    decode_head.context.out.*           C' -> C, no bias
    decode_head.<block>.conv_out.bn.*      decode_head.context.out_norm.*
    decode_head.convs.1.{conv,bn}.*        decode_head.conv_out.{0,1}.*
    decode_head.conv_cat.{conv,bn}.*       decode_head.fuse.{0,1}.*            concat with the input, 3x3 conv
    decode_head.conv_seg.*                 decode_head.classifier.*
    auxiliary_head.convs.0.{conv,bn}.*     aux_head.conv.{0,1}.*               FCN aux head on layer3
    auxiliary_head.conv_seg.*              aux_head.classifier.*

mmseg's FCNHead with two convs and ``concat_input`` (the context-free control) is the same head without a block.
mmseg's ImageNet files (``resnet50_v1c-2cccc1ad.pth``, ``resnet101_v1c-e67eebb6.pth``) hold the backbone keys
without ``backbone.`` (``stem.0.weight``, ``layer1.0.conv1.weight``, ..., ``fc.*``).

A Lightning trainer reads an mmseg file through ``dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO`` (every
shipped config's ``trainer.plugins``), which gives it the Lightning version key and marks it (``MMSEG_KEY``); the
LightningModule's ``on_load_checkpoint`` then maps the keys with ``mmseg_state_dict_for`` against the model the
config built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
from torch import Tensor, nn

from dnlseg.checkpoints.weight_files import check_state_dict_fits, read_torch_file
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
HEAD_KEYS = (  # mmseg NLHead / DNLHead / FCNHead(num_convs=2, concat_input=True) -> ContextHead
    ("convs.0.conv.", "conv_in.0."),
    ("convs.0.bn.", "conv_in.1."),
    ("convs.1.conv.", "conv_out.0."),
    ("convs.1.bn.", "conv_out.1."),
    ("conv_cat.conv.", "fuse.0."),
    ("conv_cat.bn.", "fuse.1."),
    ("conv_seg.", "classifier."),
)
BLOCK_KEYS = (  # mmseg NonLocal2d / DisentangledNonLocal2d -> dnlseg's blocks
    ("g.conv.", "value."),
    ("theta.conv.", "query."),
    ("phi.conv.", "key."),
    ("conv_mask.", "unary."),
    ("conv_out.conv.", "out."),
    ("conv_out.bn.", "out_norm."),
)
AUX_KEYS = (  # mmseg FCNHead(num_convs=1, concat_input=False) -> FCNHead
    ("convs.0.conv.", "conv.0."),
    ("convs.0.bn.", "conv.1."),
    ("conv_seg.", "classifier."),
)
MMSEG_BLOCKS = {"nl_block": "NLHead", "dnl_block": "DNLHead"}
SEGMENTOR_KEYS = (
    *((f"backbone.{a}", f"encoder.{b}") for a, b in RESNET_V1C_KEYS),
    *((f"decode_head.{block}.{a}", f"decode_head.context.{b}") for block in MMSEG_BLOCKS for a, b in BLOCK_KEYS),
    *((f"decode_head.{a}", f"decode_head.{b}") for a, b in HEAD_KEYS),
    *((f"auxiliary_head.{a}", f"aux_head.{b}") for a, b in AUX_KEYS),
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


def describe_mmseg(state: dict[str, Any]) -> str:
    """E.g. ``DNLHead, ResNetV1c-101 backbone, 19 classes, FCN aux head`` from the keys and shapes alone."""
    heads = [head for block, head in MMSEG_BLOCKS.items() if any(k.startswith(f"decode_head.{block}.") for k in state)]
    if not heads:
        heads = ["FCNHead" if "decode_head.conv_cat.conv.weight" in state else "an unknown decode head"]
    parts = [heads[0]]
    layer3 = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}
    depth = {6: "50", 23: "101", 36: "152"}.get(len(layer3))
    if depth:
        parts.append(f"ResNetV1c-{depth} backbone")
    classifier = state.get("decode_head.conv_seg.weight")
    if isinstance(classifier, Tensor):
        parts.append(f"{classifier.shape[0]} classes")
    if any(k.startswith("auxiliary_head.") for k in state):
        parts.append("FCN aux head")
    return ", ".join(parts)


def describe_model(model: nn.Module) -> str:
    """E.g. ``encoder tu-resnet50c, context DisentangledNonLocal2d, 19 classes`` for the config's model."""
    hparams = getattr(model, "hparams", {})
    network = getattr(model, "network", model)
    context = getattr(getattr(network, "decode_head", None), "context", None)
    context_name = type(context).__name__ if context is not None else "?"
    encoder = getattr(getattr(network, "encoder_options", None), "name", "?")
    parts = [f"encoder {encoder}", f"context {context_name}"]
    if "num_classes" in hparams:
        parts.append(f"{hparams['num_classes']} classes")
    return ", ".join(parts)


def mmseg_state_dict_for(model: nn.Module, state: dict[str, Any], source: str, prefix: str = "network.") -> dict:
    """The mmseg ``state`` renamed for ``model`` (a ``SegmentationModule``: keys ``network.*``).

    Raises ``CheckpointMismatchError`` naming ``source``, what the checkpoint holds, what the config built, and the
    first keys that do not fit: mmseg keys no rule maps (e.g. PSPHead's ``decode_head.psp_modules``), model keys
    the checkpoint lacks (NL into DNL: the unary conv) or has extra (R101 into R50: ``layer3.6`` ...), shapes.
    """
    renamed, unmatched = rename_all(state, SEGMENTOR_KEYS)
    renamed = {prefix + k: v for k, v in renamed.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in renamed]
    extra = [k for k in renamed if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in renamed.items()
        if k in own and isinstance(v, Tensor) and v.shape != own[k].shape
    ]
    if not (unmatched or missing or extra or shapes):
        return renamed
    origin = {prefix + new: k for k in state if (new := rename(k, SEGMENTOR_KEYS)) is not None}  # unmatched: None
    lines = [
        f"the mmsegmentation checkpoint {source} ({describe_mmseg(state)}) does not fit the model built from "
        f"this config ({describe_model(model)}):"
    ]
    if unmatched:
        lines.append(
            f"{len(unmatched)} checkpoint key(s) of a module dnlseg has no counterpart for: {first(unmatched)}"
        )
    if extra:
        names = [f"{origin[k]} (-> {k})" for k in extra]
        lines.append(f"{len(extra)} checkpoint key(s) the model does not have: {first(names)}")
    if missing:
        lines.append(f"{len(missing)} model key(s) the checkpoint does not have: {first(missing)}")
    if shapes:
        lines.append(f"{len(shapes)} shape(s) differ: {first(shapes)}")
    lines.append(
        "dnlseg reads mmseg's NLHead, DNLHead and FCNHead (2 convs, concat_input) on ResNetV1c-50/101 with an FCN "
        "aux head: use the recipe that mirrors the checkpoint's mmseg config (README, mmsegmentation models)"
    )
    raise CheckpointMismatchError("\n".join(lines))


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
