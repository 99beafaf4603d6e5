"""After validation, draw what each context block's pairwise and unary terms attend to, on a few fixed images.

For the first ``num_images`` images of the validation set and a few query cells per image chosen from the labels
(``dnlseg.analysis.attention_figure.select_queries``: the most interior cell of up to 3 classes and one cell on
a boundary), one forward per image inside ``capture_attention`` gives each block's factors, from which only the
queries' rows are computed (O(P) memory: whole images need no ``scale``). One figure
per image and block goes to TensorBoard as ``attention/<block>/image<i>`` (tab *Images*) and, with
``output_dir``, to ``<output_dir>/step<step>_<head>_<block>_image<i>.png``, titled with the head's label
(``dnlseg.context.variant_of``: NL, DNL, ...), the block and the step of the weights drawn (``evaluated_step``: the
trainer's during a fit, the checkpoint's in ``validate`` or ``analyze``). Training is unchanged: the model is in
eval mode and no gradient is taken.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from dnlseg.analysis.attention_consistency import image_window, labels_on_grid
from dnlseg.analysis.attention_figure import attention_figure, select_queries
from dnlseg.callbacks.attention_capture import AttentionCaptureCallback
from dnlseg.callbacks.module_interface import class_names_of, evaluated_step_of, ignore_index_of
from dnlseg.context import CapturedAttention, find_context_blocks, variant_of
from dnlseg.data.transforms import unnormalize

log = logging.getLogger(__name__)


class AttentionMapLogger(AttentionCaptureCallback):
    """Logs one attention figure per (image, context block) at the end of every ``every_n_validations``-th validation.

    Each query's map shows its keys (``dnlseg.analysis.attention_figure.term_maps``): the whole key grid (NL, DNL,
    PAM), its row and column (CC) or its group (ISA), or keys that are not pixels painted over the pixels they cover
    (ANN's pyramid cells, OCR's class regions, EMA's bases); keys that cover no pixels (CAM's channels) get no figure
    and the reason is recorded (``not_computed``).

    Args:
        num_images: the first this many validation images.
        max_classes: interior queries on at most this many classes per image (plus one boundary query).
        every_n_validations: draw at every n-th validation run (sanity check excluded).
        scale: resize factor of the images before the forward (e.g. 0.5 to draw 1024x2048 Cityscapes images at half
            size; the maps themselves need O(P) memory at any size).
        output_dir: also write the figures as PNG files here (null: TensorBoard only).
    """

    analyses = ("attention_maps",)

    def __init__(
        self,
        num_images: int = 2,
        max_classes: int = 3,
        every_n_validations: int = 1,
        scale: float = 1.0,
        output_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_images < 1 or max_classes < 1 or every_n_validations < 1:
            raise ValueError(
                f"num_images={num_images}, max_classes={max_classes} and every_n_validations={every_n_validations} "
                "must all be >= 1"
            )
        if not scale > 0:
            raise ValueError(f"scale={scale} must be > 0")
        self.num_images = num_images
        self.max_classes = max_classes
        self.every_n_validations = every_n_validations
        self.scale = scale
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._validations = 0

    @classmethod
    def analyze_arguments(cls, output_dir: Path) -> dict[str, Any]:
        return {"output_dir": output_dir, "every_n_validations": 1}  # the PNG files beside analyze's metrics

    def end_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations or not trainer.is_global_zero:
            return
        self.draw(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        blocks = find_context_blocks(pl_module)
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if not blocks or loader is None:
            return
        dataset = loader.dataset
        class_names = class_names_of(pl_module)
        # the dataset's class colours, for the legend
        palette = getattr(getattr(trainer, "datamodule", None), "palette", None)
        ignore_index = ignore_index_of(pl_module)
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        self.written = []  # the PNG files of this draw
        # the step of the weights drawn: the trainer's during a fit, the checkpoint's in validate / analyze
        step = evaluated_step_of(pl_module, trainer.global_step)
        for i in range(min(self.num_images, len(dataset))):
            sample = dataset[i]
            image, mask = sample["image"][None].to(pl_module.device), sample["mask"][None]  # (1, 3, H, W), (1, h, w)
            if self.scale != 1.0:
                image = F.interpolate(image, scale_factor=self.scale, mode="bilinear", align_corners=False)
            mask = labels_on_grid(mask, tuple(image.shape[-2:]))  # (1, H, W) at the image size
            maps = self.captured_attention(trainer, pl_module, image)
            display = unnormalize(image[0])
            skipped = self.skipped(pl_module, "attention_maps", maps)  # CAM: no pixel keys; the reason logged once
            for name, m in maps.items():
                if name in skipped:
                    continue
                _, _, height, width = image_window(m, "query")  # the image's part of the query grid (ISA pads it)
                queries = select_queries(labels_on_grid(mask, (height, width))[0], self.max_classes, ignore_index)
                head, label = variant_of(blocks[name])  # e.g. ("dnl", "DNL")
                title = f"{label} ({name}), step {step}, image {i}"
                fig = attention_figure(display, mask[0], m, 0, queries, class_names, ignore_index, title, palette)
                if self.output_dir is not None:
                    self.output_dir.mkdir(parents=True, exist_ok=True)
                    path = self.output_dir / f"step{step:06d}_{head}_{name}_image{i}.png"
                    fig.savefig(path, dpi=200)  # the TensorBoard layout, at twice its resolution
                    self.written.append(path)
                for logger in tensorboards:
                    logger.experiment.add_figure(f"attention/{name}/image{i}", fig, global_step=step, close=False)

    def captured_attention(
        self, trainer: L.Trainer, pl_module: L.LightningModule, image: Tensor
    ) -> dict[str, CapturedAttention]:
        """One eval-mode forward of ``image`` (1, 3, H, W): {block: its ``CapturedAttention``} (O(P) factors)."""
        with self.leave_no_trace(pl_module, grad=False):
            _, captured = self.captured_forward(trainer, pl_module, lambda: pl_module(image))
        return captured
