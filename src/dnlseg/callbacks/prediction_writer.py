"""Write ``dnlseg predict`` outputs: a label PNG per image in the benchmark's encoding, and a colour PNG.

Files, for an image named ``<name>`` by the dataset::

    <output_dir>/labels/<name>.png   8-bit single channel, the DataModule's ``encode_prediction`` of the train ids
                                     (Cityscapes: labelIds, as the server and cityscapesscripts read them;
                                     ADE20K: 1..150); class ids as they are for a DataModule without one.
    <output_dir>/color/<name>.png    RGB, the DataModule's ``palette``.

For the Cityscapes evaluator point ``CITYSCAPES_RESULTS`` at ``<output_dir>/labels`` (it searches a folder
recursively and would find both files of an image under ``<output_dir>``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

log = logging.getLogger(__name__)


def palette_table(palette: list | tuple | None) -> np.ndarray | None:
    """(256, 3) uint8 colour lookup table from a list of RGB triples (unused entries black)."""
    if not palette:
        return None
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table


class PredictionWriter(BasePredictionWriter):
    """Writes label and colour PNGs for every predicted image (module docstring).

    Expects ``predict_step`` outputs ``{"name": list of names, "prediction": (N, H, W) class ids}``.

    Args:
        output_dir: the folder to write into; null: ``<log dir of the run>/predictions``.
        color: also write the colour visualisations.
    """

    def __init__(self, output_dir: str | None = None, color: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.color = color
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
        (out / "labels").mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        encode = getattr(datamodule, "encode_prediction", None)
        colours = palette_table(getattr(datamodule, "palette", None)) if self.color else None
        if colours is not None:
            (out / "color").mkdir(parents=True, exist_ok=True)
        ids = prediction["prediction"].cpu().numpy()  # (N, H, W)
        names = prediction.get("name") or [f"{batch_idx:06d}_{i}" for i in range(len(ids))]
        for name, train_ids in zip(names, ids, strict=True):
            if train_ids.max(initial=0) > 255:
                raise ValueError(f"prediction {name} has class ids > 255; an 8-bit label PNG cannot hold them")
            labels = encode(train_ids) if encode is not None else train_ids.astype(np.uint8)
            Image.fromarray(labels.astype(np.uint8)).save(out / "labels" / f"{name}.png")
            if colours is not None:
                Image.fromarray(colours[train_ids]).save(out / "color" / f"{name}.png")
            self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"wrote {self.written} predictions (labels/, color/) to {self.resolve_dir(trainer)}")
