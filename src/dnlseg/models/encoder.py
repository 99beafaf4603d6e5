"""The backbone: an smp encoder at output stride 8 or 16, with weights only from a local file.

smp's own ``encoder_weights="imagenet"`` downloads from a hub at run time; nothing can be downloaded here,
so a hub name is refused with an explanation, and a state dict on disk (``.pth``/``.pt``/``.bin`` or
``.safetensors``) is loaded instead, in any of these layouts (``weight_layouts``):

- smp / torchvision: ``resnet50`` / ``resnet101`` take torchvision's ``resnet50-0676ba61.pth``;
- timm: a ``tu-<name>`` encoder takes timm's state dict of ``<name>`` (``conv1.0.weight``, ...);
- mmseg ImageNet: ``tu-resnet50c`` / ``tu-resnet101c`` take mmseg's ``resnet50_v1c-2cccc1ad.pth`` /
  ``resnet101_v1c-e67eebb6.pth`` (``stem.0.weight``, ...), the initialisation of every mmseg R-xx-D8 model.

Which ResNet is which in mmseg: ``tu-resnet50c`` / ``tu-resnet101c`` (timm's ResNet-C: deep 3x3 stem, and at output
stride 8 layer3 block 0 at dilation 1, layer4 block 0 at 2) are mmseg's ``ResNetV1c`` with ``contract_dilation``,
the backbone of its model zoo's R-50-D8 / R-101-D8; smp's ``resnet50`` (7x7 stem, every block of layer3/layer4 at
dilation 2/4) is mmseg's "r50b" (``ResNet`` with a torchvision stem and no contracted dilation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from segmentation_models_pytorch.encoders import get_encoder, get_encoder_names
from torch import nn

from dnlseg.checkpoints.mmseg import RESNET_V1C_KEYS, nested_state_dict, rename
from dnlseg.checkpoints.weight_files import read_torch_file
from dnlseg.errors import WeightFileError

log = logging.getLogger(__name__)

OUTPUT_STRIDES = (8, 16, 32)
TRUNCATABLE_PREFIXES = ("resnet", "resnext")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WEIGHTS_KEY = "model.network.encoder.weights"  # the config key that names an encoder weight file


@dataclass(frozen=True)
class EncoderOptions:
    """The backbone (``model.network.encoder``): an smp encoder, built by ``build_encoder``.

    Args:
        name: any smp encoder name (``resnet50``, ``resnet101``, ``resnet18``, ``tu-<timm name>`` ...).
        weights: None (random init) or a local weight file (no downloads): torchvision/smp, timm or mmseg ImageNet
            layout (module docstring).
        depth: 5 (all stages, the paper). ResNets also take 3 or 4: the encoder ends after ``layer2`` /
            ``layer3`` (stride 8 / 8-16), whose receptive field is far smaller -- the built-in synthetic
            configs use 3 so that long-range context has to come from the head. Unused stages are removed.
        output_stride: 8 (dilated stages 3-4, the paper's setting), 16 or 32.
    """

    name: str = "resnet50"
    weights: str | Path | None = None
    depth: int = 5
    output_stride: int = 8


def build_encoder(name: str, *, output_stride: int = 8, weights: str | Path | None = None, depth: int = 5) -> nn.Module:
    """An smp encoder (arguments: ``EncoderOptions``); ``encoder.out_channels[-2]`` feeds the aux head, ``[-1]`` the
    context head. A value that cannot work raises ``ValueError`` naming its ``model.network.encoder`` key."""
    key = "model.network.encoder"
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"{key}.output_stride={output_stride} must be one of {OUTPUT_STRIDES}")
    if depth not in (3, 4, 5):
        raise ValueError(f"{key}.depth={depth} must be 3, 4 or 5")
    if depth < 5 and not name.startswith(TRUNCATABLE_PREFIXES):
        raise ValueError(
            f"{key}.depth={depth} is supported for ResNet-family encoders ({', '.join(TRUNCATABLE_PREFIXES)}*), "
            f"not {name!r}; use {key}.depth=5"
        )
    if not name.startswith("tu-") and name not in get_encoder_names():
        raise ValueError(f"{key}.name={name!r} is not an smp encoder; known: {', '.join(get_encoder_names())}")
    if weights is not None and not str(weights).endswith(WEIGHT_SUFFIXES):
        raise ValueError(
            f"{key}.weights={weights!r} is not a local weight file. dnlseg never downloads: pass the path of "
            f"a state dict on disk ({', '.join(WEIGHT_SUFFIXES)}), e.g. torchvision's resnet50-0676ba61.pth "
            "copied from a machine with internet, or null for random initialisation."
        )
    # weights=None: smp builds the architecture only, no network access.
    encoder = get_encoder(name, in_channels=3, depth=depth, weights=None, output_stride=output_stride)
    for stage in unused_stages(depth):  # smp keeps them; they would hold unused parameters (DDP, optimizer)
        delattr(encoder, stage)
    if weights is not None:
        load_encoder_weights(encoder, Path(weights))
    return encoder


def unused_stages(depth: int) -> list[str]:
    """ResNet stages an encoder of ``depth`` never runs: depth 3 ends after layer2, 4 after layer3."""
    return [f"layer{i}" for i in range(depth, 5)]


def weight_layouts(encoder: nn.Module) -> dict[str, Callable[[str], str | None]]:
    """How the keys of each weight-file layout this encoder takes become its own keys (None: a key to drop).

    "smp/torchvision": the encoder's own keys (torchvision's ResNets are smp's); for smp's ``tu-`` (timm) encoders
    also "timm" (timm's model keys: the encoder's without ``model.``) and, for ``tu-resnet*c``, "mmseg ImageNet"
    (mmseg's ResNetV1c files, ``stem.0.weight`` ...; ``dnlseg.checkpoints.mmseg``).
    """
    layouts: dict[str, Callable[[str], str | None]] = {"smp/torchvision": lambda key: key}
    if hasattr(encoder, "model"):  # smp's TimmUniversalEncoder
        layouts["timm"] = lambda key: f"model.{key}"
        if "model.conv1.0.weight" in encoder.state_dict():  # timm's deep stem: ResNet-C, mmseg's ResNetV1c
            layouts["mmseg ImageNet"] = lambda key: rename(key, RESNET_V1C_KEYS)
    return layouts


def example_keys(encoder: nn.Module, layout: str) -> list[str]:
    """Two keys a file of ``layout`` has for this encoder (its first, and its first ``layer1`` key)."""
    own = list(encoder.state_dict())
    keys = [own[0], next((k for k in own if ".layer1." in f".{k}"), own[-1])]
    if layout == "timm":
        return [k.removeprefix("model.") for k in keys]
    if layout == "mmseg ImageNet":
        return [rename(k, [(new, old) for old, new in RESNET_V1C_KEYS]) or k for k in keys]
    return keys


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file, unwrapped from a ``state_dict`` / ``model`` entry; ``WeightFileError`` naming
    the file when it cannot be read or holds no state dict."""
    loaded = read_torch_file(path, WEIGHTS_KEY)
    state = nested_state_dict(loaded)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = (
            f"a {type(loaded).__name__}"
            if state is None
            else f"a dict without tensors ({', '.join(list(map(str, state))[:5])})"
        )
        raise WeightFileError(f"{WEIGHTS_KEY}: {path} holds {held}, expected a state dict (parameter name -> tensor)")
    return state


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local state dict into ``encoder`` in whichever layout of ``weight_layouts`` fits it exactly; a
    classifier (``fc.*``, ``classifier.*``, ``head.*``) is dropped. A file that fits no layout raises
    ``WeightFileError`` naming the keys each layout expects and what is wrong in the closest one."""
    state = read_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "head."))}
    dropped = tuple(f"{stage}." for stage in unused_stages(getattr(encoder, "_depth", 5)))
    expected = encoder.state_dict()
    attempts = []
    for layout, convert in weight_layouts(encoder).items():
        renamed = {
            new: v
            for k, v in state.items()
            if (new := convert(k)) is not None and not (dropped and new.startswith(dropped))
        }
        shape_errors = [
            f"{k}: file {tuple(v.shape)} vs encoder {tuple(expected[k].shape)}"
            for k, v in renamed.items()
            if k in expected and v.shape != expected[k].shape
        ]
        missing = sorted(expected.keys() - renamed.keys())
        unexpected = sorted(renamed.keys() - expected.keys())
        if not (missing or unexpected or shape_errors):
            encoder.load_state_dict(renamed)
            log.info("loaded encoder weights from %s (%s layout, %d tensors)", path, layout, len(renamed))
            return
        attempts.append((len(missing) + len(unexpected) + len(shape_errors), layout, missing, unexpected, shape_errors))
    _, layout, missing, unexpected, shape_errors = min(attempts, key=lambda attempt: attempt[0])
    layouts = "; ".join(f"{name}: {', '.join(example_keys(encoder, name))}, ..." for name in weight_layouts(encoder))
    raise WeightFileError(
        f"{WEIGHTS_KEY}: {path} does not fit the encoder in any layout it takes ({layouts}). The file has "
        f"{len(state)} tensors ({', '.join(list(state)[:3])}, ...); closest, {layout}: missing {missing[:5]}, "
        f"unexpected {unexpected[:5]}, shape mismatches {shape_errors[:5]}"
    )
