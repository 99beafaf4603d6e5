"""Write ``dnlseg predict`` outputs: per image a label PNG in the dataset's encoding, a colour PNG and an overlay.

Files, for an image named ``<name>`` by the dataset (a name may hold subfolders, e.g. ``site_a/0001``), each at
the image's own size::

    <output_dir>/labels/<name>.png    8-bit single channel, the DataModule's ``encode_prediction`` of the train ids
                                      (Cityscapes: labelIds, as the server and cityscapesscripts read them;
                                      ADE20K: 1..150; own data: the classes' mask values; synthetic: class ids);
                                      a palette PNG with the DataModule's ``label_palette`` where it has one
                                      (Pascal VOC: class ids 0..20, as VOC's own SegmentationClass files).
    <output_dir>/color/<name>.png     RGB, the DataModule's ``palette``.
    <output_dir>/overlay/<name>.png   RGB, the image with the colours blended over it (``overlay_alpha``).

``dnlseg predict`` writes into ``<its output folder>/predictions`` (``dnlseg.cli.run_dirs``; ``--output_dir``).
For the Cityscapes evaluator point ``CITYSCAPES_RESULTS`` at ``<output_dir>/labels`` (it searches a folder
recursively and would find the colour files of an image too).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from dnlseg.data.transforms import unnormalize

log = logging.getLogger(__name__)


def palette_table(palette: list | tuple | None) -> np.ndarray | None:
    """(256, 3) uint8 colour lookup table from a list of RGB triples (unused entries black)."""
    if not palette:
        return None
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table


class PredictionWriter(BasePredictionWriter):
    """Writes label, colour and overlay PNGs for every predicted image (module docstring).

    Expects ``predict_step`` outputs ``{"name": list of names, "prediction": (N, H, W) class ids}``; the
    batch's ``"image"`` (normalised, at the prediction's size) gives the overlays.

    Args:
        output_dir: the folder to write into; null: ``<log dir>/predictions`` (the command's output folder).
        color: also write the colour and overlay PNGs.
        overlay_alpha: weight of the class colours in the overlay (0: the image, 1: the colour PNG).
    """

    def __init__(self, output_dir: str | None = None, color: bool = True, overlay_alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        if not 0 <= overlay_alpha <= 1:
            raise ValueError(f"overlay_alpha={overlay_alpha} must be in [0, 1]")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.color = color
        self.overlay_alpha = overlay_alpha
        self.written = 0

    def resolve_dir(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return Path(trainer.log_dir or ".") / "predictions"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(prediction, dict) or "prediction" not in prediction:
            raise TypeError(
                "PredictionWriter expects predict_step to return {'name': [...], 'prediction': (N, H, W) ids}; "
                f"got {type(prediction).__name__}"
            )
        out = self.resolve_dir(trainer)
        datamodule = trainer.datamodule
        encode = getattr(datamodule, "encode_prediction", None)
        label_palette = getattr(datamodule, "label_palette", None)  # palette PNGs (mode P), e.g. Pascal VOC's
        colours = palette_table(getattr(datamodule, "palette", None)) if self.color else None
        ids = prediction["prediction"].cpu().numpy()  # (N, H, W)
        names = prediction.get("name") or [f"{batch_idx:06d}_{i}" for i in range(len(ids))]
        images = batch.get("image") if isinstance(batch, dict) else None
        for i, (name, train_ids) in enumerate(zip(names, ids, strict=True)):
            if train_ids.max(initial=0) > 255:
                raise ValueError(f"prediction {name} has class ids > 255; an 8-bit label PNG cannot hold them")
            labels = encode(train_ids) if encode is not None else train_ids.astype(np.uint8)
            label_png = Image.fromarray(labels.astype(np.uint8))
            if label_palette:
                label_png.putpalette(np.asarray(label_palette, dtype=np.uint8).ravel().tolist())  # mode L -> P
            save(label_png, out / "labels" / f"{name}.png")
            if colours is None:
                continue
            colour = colours[train_ids]  # (H, W, 3)
            save(Image.fromarray(colour), out / "color" / f"{name}.png")
            if images is not None and tuple(images[i].shape[-2:]) == train_ids.shape:
                rgb = unnormalize(images[i]) * 255  # (H, W, 3) in [0, 255]
                blend = (1 - self.overlay_alpha) * rgb + self.overlay_alpha * colour
                save(Image.fromarray(blend.round().astype(np.uint8)), out / "overlay" / f"{name}.png")
        self.written += len(ids)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        kinds = "labels/, color/, overlay/" if self.color else "labels/"
        rank_zero_info(f"wrote {self.written} predictions ({kinds}) to {self.resolve_dir(trainer)}")


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
