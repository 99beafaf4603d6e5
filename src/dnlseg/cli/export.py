"""``dnlseg export``: a trained network as an ONNX file or a TorchScript archive that runs without dnlseg.

    dnlseg export -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path dnl.ckpt --output dnl.onnx
    dnlseg export -c <run>/config.yaml --ckpt_path <mmseg zoo .pth> --output m.onnx --input_size 1024 2048
    dnlseg export -c <run>/config.yaml --ckpt_path last --format torchscript --output m.pt   # the run's last.ckpt
    python examples/onnx_predict.py dnl.onnx images/ labels/        # numpy, Pillow and onnxruntime only

The graph takes uint8 RGB images (N, 3, H, W) and returns logits (N, K, H, W): ``dnlseg predict``'s whole-image
mode (``dnlseg.deploy.segmenter``); its metadata (``dnlseg.deploy.metadata``) carries the classes, palette, label
encoding, normalisation, output stride and the config. Batch, height and width are dynamic unless ``--input_size``
fixes height and width. The file is written beside ``--output`` and renamed onto it once it is complete and, when
onnxruntime is installed, checked against PyTorch; a failure leaves nothing at ``--output``. The command is thin:
the export itself is ``dnlseg.deploy``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import yaml

from dnlseg.cli.analyze import read_config
from dnlseg.cli.lightning_cli import ConfigReader, DnlsegCLI, constructor_error
from dnlseg.cli.preflight import check_checkpoint_file
from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dnlseg.deploy.files import atomic_output
from dnlseg.deploy.metadata import build_metadata
from dnlseg.deploy.segmenter import ImageSegmenter
from dnlseg.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
CHECK_SIZE = (128, 256)  # the image of the check against PyTorch when height and width are dynamic
# Runtime options that change no weight and no output: off in the exported network.
RUNTIME_OVERRIDES = ("--model.runtime.compile=false", "--model.runtime.channels_last=false")


def parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="dnlseg export",
        allow_abbrev=False,
        description="Export a trained network as ONNX or TorchScript (uint8 RGB images in, logits out). Other "
        "arguments are LightningCLI overrides of the config (e.g. --data.init_args.classes=...).",
    )
    parser.add_argument("-c", "--config", required=True, help="the run's config.yaml or the recipe it was fit with")
    parser.add_argument(
        "--ckpt_path",
        default=None,
        help="the weights: a dnlseg .ckpt, `last` (the run's last.ckpt, as validate reads it) or an mmseg model-zoo "
        ".pth (default: untrained)",
    )
    parser.add_argument("--output", required=True, help="the file to write (model.onnx, model.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or torchscript")
    parser.add_argument(
        "--input_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="a graph for images of exactly this height and width (default: any size; onnx only)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20; --attention attention_op: 23)")
    parser.add_argument(
        "--attention",
        default="chunked",
        help="how the attention is written in ONNX: chunked (default, standard ONNX, O(P) memory), mha "
        "(onnxruntime's MultiHeadAttention, O(P), onnxruntime only), attention_op (opset 23 Attention), "
        "materialized (both build the P x P matrix)",
    )
    parser.add_argument("--no_check", action="store_true", help="skip the check against PyTorch (onnxruntime)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser.parse_known_args(args)


class ModelReader(ConfigReader):
    """Parses a config and builds its model and DataModule only: no trainer, no seed, no output folder."""

    def instantiate_classes(self) -> None:
        try:
            instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes  # jsonargparse
            built = instantiate(self.config)
        except ValueError as error:
            raise ConfigError(constructor_error(error, self.config)) from error
        self.model, self.datamodule = built.model, built.data


def build(config_file: Path, overrides: list[str]) -> ModelReader:
    """The config's model (a ``SegmentationModule``) and DataModule, with ``RUNTIME_OVERRIDES``."""
    from dnlseg.data import SegmentationDataModule
    from dnlseg.models import SegmentationModule

    config = read_config(config_file)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return ModelReader(
            SegmentationModule,
            SegmentationDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=["-c", str(Path(tmp) / "config.yaml"), *overrides, *RUNTIME_OVERRIDES],
            run=False,
        )


def load_weights(module, ckpt_path: str) -> None:
    """The weights of a dnlseg checkpoint or an mmseg file into ``module``; a mismatch is one ``ExportError`` line."""
    from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
    from dnlseg.errors import CheckpointMismatchError

    checkpoint = AtomicCheckpointIO().load_checkpoint(ckpt_path)  # WeightFileError for a file that is no checkpoint
    try:
        module.on_load_checkpoint(checkpoint)  # maps an mmseg file's keys; checks every shape
    except CheckpointMismatchError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("resume ")]
        details = "".join(line + (" " if line.endswith(":") else "; ") for line in lines)
        raise ExportError(
            f"--ckpt_path {ckpt_path}: {details}export with the config the checkpoint was trained with (its run's "
            "config.yaml, or the recipe that mirrors an mmseg checkpoint)"
        ) from error
    module.load_state_dict(checkpoint["state_dict"])


def check_blocks(network) -> None:
    """Refuse a context block configured to build the (P, Pk) matrix: the graph would build it too."""
    from dnlseg.context import find_context_blocks

    for name, block in find_context_blocks(network).items():
        if getattr(block, "attention", None) == "materialized":
            key = "model.network.context" if name == "decode_head.context" else "model.network.decode_head"
            raise ExportError(
                f"{key}.init_args.attention=materialized ({name}) would put the P x P attention matrix in the "
                f"exported graph: export with --{key}.init_args.attention=fused (same weights and outputs)"
            )


def check_options(opts: argparse.Namespace, output: Path) -> None:
    """What is wrong with the options alone, before anything is built."""
    if output.exists() and not opts.overwrite:
        raise ExportError(f"--output {output} exists: choose another path, or add --overwrite to replace it")
    if output.is_dir():
        raise ExportError(f"--output {output} is a folder: give a file name, e.g. {output / 'model.onnx'}")
    if opts.input_size is not None and min(opts.input_size) < 1:
        raise ExportError(f"--input_size {opts.input_size[0]} {opts.input_size[1]}: both must be >= 1")
    if opts.format == "torchscript":
        if opts.input_size is not None:
            raise ExportError(
                "--input_size: a TorchScript trace takes any image size; it applies to --format onnx only"
            )
        if opts.opset is not None or opts.attention != "chunked":
            raise ExportError("--opset and --attention apply to --format onnx; leave them out for torchscript")
        return
    try:
        from dnlseg.deploy import onnx_model
    except ImportError as error:
        raise ExportError(
            f"--format onnx needs the packages onnx and onnxscript ({error.name} is missing): "
            "pip install 'dnlseg[export]' (or pip install onnx onnxscript onnxruntime)"
        ) from error
    onnx_model.check_options(opts.attention, opts.opset or onnx_model.DEFAULT_OPSET)


def export(args: list[str]) -> Path:
    """Run ``dnlseg export`` with ``args`` (no subcommand); returns the file written."""
    opts, overrides = parse(args)
    output = Path(opts.output).expanduser()
    check_options(opts, output)
    if opts.ckpt_path is not None:
        check_checkpoint_file(opts.ckpt_path, "--ckpt_path")
    else:
        log.warning("export without --ckpt_path: the network keeps its initial, untrained weights")
    reader = build(Path(opts.config), overrides)
    module, datamodule = reader.model, reader.datamodule
    ckpt_path = DnlsegCLI.evaluated_checkpoint(reader.config, opts.ckpt_path)  # `last`: the run's last.ckpt
    if ckpt_path is not None:
        load_weights(module, ckpt_path)
    module.eval()
    check_blocks(module.network)
    segmenter = ImageSegmenter(module.network, IMAGENET_MEAN, IMAGENET_STD).eval()
    if not whole_image_at_scale_one(module.inference):
        log.warning(
            "model.inference=%s is not in the exported graph: it computes the whole image at its own size "
            "(dnlseg predict's default); resize or tile images yourself for that mode",
            dataclasses.asdict(module.inference),
        )
    metadata = build_metadata(
        datamodule=datamodule,
        num_classes=module.hparams.num_classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=tuple(opts.input_size) if opts.input_size else None,
        output_stride=module.network.encoder_options.output_stride,
        align_corners=module.network.align_corners,
        attention=attention_description(opts),
        inference=dataclasses.asdict(module.inference),
        checkpoint=Path(ckpt_path).name if ckpt_path else None,
        config=reader.parser.dump(reader.config, skip_unset=False),
    )
    size = tuple(opts.input_size) if opts.input_size else CHECK_SIZE
    with atomic_output(output) as tmp:
        if opts.format == "onnx":
            error = write_onnx(segmenter, metadata, opts, tmp, size)
        else:
            error = write_torchscript(segmenter, metadata, opts, tmp, size)
    checked = "not checked" if error is None else f"max relative error {error:.1e} against PyTorch at {size}"
    log.info("export: wrote %s (%s, %.1f MB; %s)", output, opts.format, output.stat().st_size / 1e6, checked)
    return output


def whole_image_at_scale_one(inference) -> bool:
    """Whether ``dnlseg predict`` runs the network once on the whole image at its own size (what is exported)."""
    return inference.mode == "whole" and inference.views == 1 and inference.scales[0] == 1 and not inference.base_size


def attention_description(opts: argparse.Namespace) -> dict[str, str]:
    if opts.format == "torchscript":
        return {"formulation": "sdpa", "graph": "aten::scaled_dot_product_attention", "memory": "O(P)"}
    from dnlseg.deploy.onnx_attention import FORMULATIONS

    formulation = FORMULATIONS[opts.attention]
    return {"formulation": opts.attention, "graph": formulation.graph, "memory": formulation.memory}


def write_onnx(segmenter, metadata, opts, path: Path, size) -> float | None:
    import onnx

    from dnlseg.deploy.onnx_model import DEFAULT_OPSET, check_onnx, export_onnx

    input_size = tuple(opts.input_size) if opts.input_size else None
    model = export_onnx(
        segmenter, metadata, input_size=input_size, opset=opts.opset or DEFAULT_OPSET, attention=opts.attention
    )
    onnx.save_model(model, path)
    if opts.no_check:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX file was not checked (pip install onnxruntime)")
        return None
    return check_onnx(path, segmenter, size)


def write_torchscript(segmenter, metadata, opts, path: Path, size) -> float | None:
    from dnlseg.deploy.torchscript import check_torchscript, export_torchscript, save_torchscript

    save_torchscript(export_torchscript(segmenter), metadata, path)
    return None if opts.no_check else check_torchscript(path, segmenter, size)
