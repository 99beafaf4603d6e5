"""The backbone: an smp encoder at output stride 8 or 16, with weights only from a local file.

smp's own ``encoder_weights="imagenet"`` downloads from a hub at run time; nothing can be downloaded here,
so a hub name is refused with an explanation, and a torchvision-style ``.pth``/``.pt`` or a ``.safetensors``
state dict on disk is loaded instead (e.g. torchvision's ``resnet50-0676ba61.pth``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from segmentation_models_pytorch.encoders import get_encoder, get_encoder_names
from torch import nn

log = logging.getLogger(__name__)

OUTPUT_STRIDES = (8, 16, 32)
TRUNCATABLE_PREFIXES = ("resnet", "resnext")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def build_encoder(name: str, output_stride: int = 8, weights: str | Path | None = None, depth: int = 5) -> nn.Module:
    """An smp encoder; ``encoder.out_channels[-2]`` feeds the aux head, ``[-1]`` the context head.

    Args:
        name: any smp encoder name (``resnet50``, ``resnet101``, ``resnet18``, ``tu-<timm name>`` ...).
        output_stride: 8 (dilated stages 3-4, the paper's setting), 16 or 32.
        weights: None (random init) or the path of a local state-dict file.
        depth: 5 (all stages, the paper). ResNets also take 3 or 4: the encoder ends after ``layer2`` /
            ``layer3`` (stride 8 / 8-16), whose receptive field is far smaller -- the built-in synthetic
            configs use 3 so that long-range context has to come from the head. Unused stages are removed.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride={output_stride} must be one of {OUTPUT_STRIDES}")
    if depth not in (3, 4, 5):
        raise ValueError(f"encoder_depth={depth} must be 3, 4 or 5")
    if depth < 5 and not name.startswith(TRUNCATABLE_PREFIXES):
        raise ValueError(
            f"encoder_depth={depth} is supported for ResNet-family encoders ({', '.join(TRUNCATABLE_PREFIXES)}*), "
            f"not {name!r}; use encoder_depth=5"
        )
    if not name.startswith("tu-") and name not in get_encoder_names():
        raise ValueError(f"encoder_name={name!r} is not an smp encoder; known: {', '.join(get_encoder_names())}")
    if weights is not None and not str(weights).endswith(WEIGHT_SUFFIXES):
        raise ValueError(
            f"encoder_weights={weights!r} is not a local weight file. dnlseg never downloads: pass the path of "
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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"encoder_weights: no file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # checkpoints that nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"encoder_weights: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local state dict into ``encoder``; a classifier (``fc.*``) is dropped, any other mismatch raises."""
    state = read_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "head."))}
    dropped = tuple(f"{stage}." for stage in unused_stages(getattr(encoder, "_depth", 5)))
    state = {k: v for k, v in state.items() if not (dropped and k.startswith(dropped))}
    expected = encoder.state_dict()
    shape_errors = [
        f"{k}: file {tuple(v.shape)} vs encoder {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected or shape_errors:
        raise ValueError(
            f"encoder_weights: {path} does not fit the encoder: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {shape_errors[:5]}"
        )
    encoder.load_state_dict(state)
    log.info("loaded encoder weights from %s (%d tensors)", path, len(state))
