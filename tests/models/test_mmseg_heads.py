"""The decode head (and aux head) each Cityscapes recipe builds computes what the head of the mmseg config it mirrors
computes, from the same features: both built as their configs say, every width divided by 16; mmseg's random weights
(every BatchNorm statistic, gamma and zero-initialised layer too) loaded into ours through ``mmseg_key`` (the heads'
and blocks' ``mmseg_names``: the key map a zoo file is read with); then the eval logits (float32) and, in training
mode, every output, buffer and weight gradient (float64). The full networks, their zoo files and a training step are
compared in tests/checkpoints/test_mmseg.py and tests/models/test_mmseg_training_step.py (slow)."""

from functools import partial
from importlib import import_module

import pytest
import torch
from torch import nn

from dnlseg.checkpoints.mmseg import mmseg_key
from dnlseg.models.heads import ContextHead, FCNHead, HeadOutput
from tests.mmseg_helpers import assert_randomised, mirrored_config
from tests.recipes import recipe, resolved

SHRINK = 16  # R50-D8's 1024 / 2048 stage widths -> 64 / 128, the heads' 512 -> 32
RECIPES = [  # the Cityscapes 512x1024 recipes, one per mmseg head
    "baseline_r50_d8_512x1024_80k",
    "nl_r50_d8_512x1024_80k",
    "dnl_r50_d8_512x1024_80k",
    "gcnet_r50_d8_512x1024_80k",
    "ccnet_r50_d8_512x1024_80k",
    "danet_r50_d8_512x1024_80k",
    "ann_r50_d8_512x1024_80k",
    "isanet_r50_d8_512x1024_80k",
    "emanet_r50_d8_512x1024_80k",
    "ocrnet_r101_d8_512x1024_80k",
]
SIZE = (13, 11)  # not whole 8 x 8 ISA tiles
# float64 agreement, relative to the largest value of each output, buffer or (all) gradients. DNL differs the most,
# 7e-9 (its logits and its first conv's gradient): mmseg divides the pairwise logits by ``torch.tensor(0.05)``, a
# float32, 0.05 (1 + 1.5e-8); every other head <= 6e-15 (measured). A wrong name or layer shows at 1e-2 or more.
FLOAT64 = 1e-7


def factory(spec):
    """A resolved config value as jsonargparse builds it: ``{class_path, init_args}`` -> the class with its
    arguments bound (what a ``Callable`` option gets), anything else as it is."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, name = spec["class_path"].rsplit(".", 1)
        return partial(getattr(import_module(module), name), **{k: factory(v) for k, v in spec["init_args"].items()})
    return spec


def shrunk(spec: dict) -> dict:
    """The head's own widths divided by ``SHRINK`` (EMA's ``out_channels``); its ratios stay."""
    args = {
        k: v // SHRINK if k.endswith("channels") and isinstance(v, int) else v for k, v in spec["init_args"].items()
    }
    return {**spec, "init_args": args}


def our_heads(name: str) -> tuple[nn.Module, nn.Module]:
    """(decode head, aux head) as the recipe's ``model.network`` builds them, its widths divided by ``SHRINK``."""
    network = resolved(recipe(f"cityscapes/{name}"))["model"]["network"]
    stages = [3, 64 // SHRINK, 256 // SHRINK, 1024 // SHRINK, 2048 // SHRINK]
    channels, dropout = network["head_channels"] // SHRINK, network["dropout"]
    if network["decode_head"] is not None:
        decode = factory(shrunk(network["decode_head"]))(stages, 5, channels, dropout)
    else:
        block = factory(network["context"])
        decode = ContextHead(in_channels=stages[-1], channels=channels, num_classes=5, context=block, dropout=dropout)
    aux = FCNHead(in_channels=stages[-2], channels=network["aux_channels"] // SHRINK, num_classes=5, dropout=dropout)
    return decode, aux


def mmseg_heads(name: str, seed: int) -> tuple[nn.Module, nn.Module]:
    """(decode head, aux head) of the mirrored mmseg config (OCR: its cascade's OCRHead and FCNHead), shrunk, random."""
    from mmseg_reference import decode_head, load_config, randomize_block

    model = load_config(mirrored_config(recipe(f"cityscapes/{name}"))).model
    if isinstance(model.decode_head, list):  # CascadeEncoderDecoder: [FCNHead, OCRHead]
        aux_config, decode_config = model.decode_head
    else:
        decode_config, aux_config = model.decode_head, model.auxiliary_head
    heads = decode_head(decode_config), decode_head(aux_config)
    return assert_randomised(randomize_block(heads[0], seed)), assert_randomised(randomize_block(heads[1], seed + 1))


def load_mmseg_weights(ours: nn.Module, theirs: nn.Module) -> None:
    """``theirs``' state dict into ``ours`` through ``mmseg_key``: every key of each side has its counterpart."""
    state = theirs.state_dict()
    mapped = {key: mmseg_key(ours, key) for key in ours.state_dict()}
    assert sorted(mapped.values()) == sorted(state), "the key maps differ"
    ours.load_state_dict({key: state[theirs_key] for key, theirs_key in mapped.items()})


def pairs(name: str, dtype: torch.dtype):
    decode, aux = our_heads(name)
    mm_decode, mm_aux = mmseg_heads(name, seed=1)
    load_mmseg_weights(decode, mm_decode)
    load_mmseg_weights(aux, mm_aux)
    return [m.to(dtype) for m in (decode, aux, mm_decode, mm_aux)]


def features(dtype: torch.dtype) -> list[torch.Tensor]:
    """mmseg's ``inputs`` (stage 1 .. 4): the heads read ``in_index`` 2 (stage 3) and 3 (stage 4)."""
    generator = torch.Generator().manual_seed(0)
    widths = [256 // SHRINK, 512 // SHRINK, 1024 // SHRINK, 2048 // SHRINK]
    return [torch.randn(2, c, *SIZE, generator=generator, dtype=dtype) for c in widths]


def run(decode, aux, mm_decode, mm_aux, inputs):
    """(ours, mmseg's): each {output name: tensor} of both heads, as the networks run them (OCR: the cascade)."""
    last, previous = inputs[3], inputs[2]
    coarse = aux(previous)
    available = {"last": last, "previous": previous, "coarse": coarse}
    out = decode(*(available[k] for k in getattr(decode, "inputs", ("last",))))
    ours = {"logits": out.logits, **out.side} if isinstance(out, HeadOutput) else {"logits": out}
    ours["aux"] = coarse
    mm_coarse = mm_aux(inputs)
    theirs = mm_decode(inputs, mm_coarse) if "coarse" in getattr(decode, "inputs", ()) else mm_decode(inputs)
    if isinstance(theirs, tuple):  # DAHead: (pam_cam, pam, cam); in eval only the first is ours
        theirs = dict(zip(("logits", "pam", "cam"), theirs, strict=True))
    else:
        theirs = {"logits": theirs}
    theirs["aux"] = mm_coarse
    return ours, {k: theirs[k] for k in ours}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(autouse=True)
def cc_oracle(criss_cross_oracle):
    return criss_cross_oracle


@pytest.mark.parametrize("name", RECIPES)
def test_eval_logits_equal_those_of_the_mirrored_mmseg_head(name):
    modules = pairs(name, torch.float32)
    for module in modules:
        module.eval()
    with torch.no_grad():
        ours, theirs = run(*modules, features(torch.float32))
    for key in ours:
        assert relative(ours[key], theirs[key]) <= 1e-5, (key, relative(ours[key], theirs[key]))


@pytest.mark.parametrize("name", RECIPES)
def test_training_outputs_buffers_and_gradients_equal_the_mirrored_mmseg_heads(name):
    """float64, dropout off (the full networks' training step compares it with dropout on)."""
    modules = pairs(name, torch.float64)
    for module in modules:
        module.train()
        for dropout in (m for m in module.modules() if isinstance(m, nn.Dropout2d)):
            dropout.p = 0.0
    inputs = features(torch.float64)
    ours, theirs = run(*modules, inputs)
    for outputs in (ours, theirs):
        total = sum((t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum() for t in outputs.values())
        total.backward()
    assert ours.keys() == theirs.keys() >= {"logits", "aux"}
    for key in ours:
        assert relative(ours[key], theirs[key]) <= FLOAT64, key
    decode, aux, mm_decode, mm_aux = modules
    for mine, reference in ((decode, mm_decode), (aux, mm_aux)):
        state, persistent = dict(reference.named_buffers(remove_duplicate=False)), mine.state_dict()
        for key, buffer in mine.named_buffers():  # BatchNorm statistics, EMA's bases (APNB: a shared projection)
            if key in persistent:
                expected = state[mmseg_key(mine, key)]
                if key.endswith("num_batches_tracked"):
                    assert torch.equal(buffer, expected), key
                else:
                    assert relative(buffer, expected) <= FLOAT64, key
        grads = {n: p.grad for n, p in reference.named_parameters(remove_duplicate=False)}
        scale = max(g.abs().max() for g in grads.values() if g is not None)
        for key, param in mine.named_parameters():
            expected = grads[mmseg_key(mine, key)]
            if expected is None:  # EMA's mid conv: no gradient through the EM steps
                assert param.grad is None, key
            else:
                assert (param.grad - expected).abs().max() <= FLOAT64 * scale, key
