"""What every dnlseg DataModule provides: the class metadata the model and the outputs read, and prediction on a folder.

The CLI accepts as ``--data`` any concrete subclass of ``SegmentationDataModule`` (and lists exactly those in
``dnlseg fit --help``). A subclass sets, in ``__init__``:

- ``num_classes``, ``class_names``, ``ignore_index`` (``IGNORE_INDEX`` in every dataset here): linked into the
  model by the CLI (never typed twice);
- ``palette``: one RGB triple per class, for colour PNGs, prediction overlays and figure legends;
- ``predict_dir``: a folder of images for ``dnlseg predict`` (None: the dataset's own predict split);

and implements ``predict_dataloader`` (``dnlseg.data.folder.predict_folder_loader`` reads ``predict_dir``).
``encode_prediction`` maps train ids to the dataset's label-file encoding (identity here); ``label_palette``, where
a dataset's label files are palette PNGs (Pascal VOC), is the palette ``dnlseg predict`` writes into its label PNGs.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from dnlseg.checkpoints.hyperparameters import plain

IGNORE_INDEX = 255  # the label value of void pixels, in every dataset here (Cityscapes' and mmseg's convention)


class SegmentationDataModule(L.LightningDataModule, ABC):
    """The contract of a dnlseg DataModule (module docstring)."""

    num_classes: int
    class_names: list[str]
    ignore_index: int
    palette: list[tuple[int, int, int]]
    predict_dir: str | None = None
    label_palette: list[tuple[int, int, int]] | None = None  # None: label PNGs are plain 8-bit (mode L)

    def save_hyperparameters(self, *args: Any, frame: Any = None, **kwargs: Any) -> None:
        """Lightning's, with the option groups (``LoaderOptions``, ``SetupChecks`` ...) stored as plain values: a
        checkpoint then holds no pickled dnlseg object, and a resumed fit (``weights_only=True``) reads it."""
        super().save_hyperparameters(*args, frame=frame or inspect.currentframe().f_back, **kwargs)  # type: ignore[union-attr]
        self._hparams.update({name: plain(value) for name, value in self._hparams.items()})

    @abstractmethod
    def predict_dataloader(self) -> DataLoader:
        """Images of ``predict_dir`` when it is set (any size, batch 1), else the dataset's predict split."""

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> the dataset's label encoding (uint8); identity unless the dataset has its own."""
        return train_ids.astype(np.uint8)
