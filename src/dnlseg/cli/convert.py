"""``dnlseg convert``: an mmsegmentation model-zoo checkpoint written once as a dnlseg (Lightning) checkpoint.

    dnlseg convert --ckpt_path dnl_r50-d8_512x1024_80k_cityscapes_20200904_233629-58b2f778.pth --output dnl_r50.ckpt
    dnlseg validate -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path dnl_r50.ckpt

Not needed to use an mmseg file (every command reads one directly); for users who want a file in dnlseg's layout.
The keys are renamed (``dnlseg.checkpoints.mmseg``) and nothing else changes: the file holds the weights,
mmseg's ``meta`` under ``mmseg_meta``, and no training state. Whether it fits a config is checked when a command
loads it with that config. An existing ``--output`` is never overwritten.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lightning

from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.checkpoints.mmseg import (
    SEGMENTOR_KEYS,
    check_supported_head,
    describe_mmseg,
    first,
    is_mmseg_checkpoint,
    nested_state_dict,
    rename_all,
)
from dnlseg.checkpoints.weight_files import read_torch_file
from dnlseg.errors import CheckpointMismatchError, WeightFileError

log = logging.getLogger(__name__)
CONVERTED_HEADS = ("NLHead", "DNLHead", "FCNHead")  # the heads whose keys SEGMENTOR_KEYS renames without a model


def parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dnlseg convert", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--ckpt_path", required=True, help="the mmsegmentation checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="the dnlseg checkpoint to write (.ckpt); must not exist")
    return parser.parse_args(args)


def convert(args: list[str]) -> Path:
    """Run ``dnlseg convert`` with ``args`` (no subcommand); returns the file written."""
    opts = parse(args)
    source, output = Path(opts.ckpt_path), Path(opts.output)
    if output.exists():
        raise WeightFileError(f"--output {output} exists; dnlseg convert never overwrites a file: choose another path")
    loaded = read_torch_file(source, "--ckpt_path")
    mmseg_state = nested_state_dict(loaded)
    if mmseg_state is None or not is_mmseg_checkpoint(loaded):
        raise WeightFileError(
            f"--ckpt_path {source} is not an mmsegmentation checkpoint: expected a dict whose 'state_dict' holds "
            "backbone.* / decode_head.* keys"
        )
    head = check_supported_head(mmseg_state, str(source))  # PSANet, SegFormer, ...: refused, the head named
    state, unmatched = rename_all(mmseg_state, SEGMENTOR_KEYS)
    if unmatched:
        other = head.head not in CONVERTED_HEADS  # a head whose keys only its recipe's model can map
        raise CheckpointMismatchError(
            f"the mmsegmentation checkpoint {source} ({describe_mmseg(mmseg_state)}) has {len(unmatched)} key(s) of a "
            f"module dnlseg has no counterpart for: {first(unmatched)}"
            + (
                f"; dnlseg convert renames {', '.join(CONVERTED_HEADS)} files, a {head.head} file loads as it is: "
                "give it to --ckpt_path (validate, test, predict, analyze) or --model.init_weights (fit) with the "
                "recipe that mirrors its mmseg config (configs/cityscapes/)"
                if other
                else ""
            )
        )
    checkpoint = {
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {f"network.{k}": v for k, v in state.items()},
        "epoch": 0,
        "global_step": 0,
        "mmseg_meta": loaded.get("meta"),
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, output)
    log.info("wrote %s (%s, %d tensors) from %s", output, describe_mmseg(mmseg_state), len(state), source)
    return output
