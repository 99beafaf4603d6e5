"""The default DataModule: synthetic images whose labels need long-range context (``scene.py`` says how)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from cityscapesscripts.helpers.labels import trainId2label
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

from dnlseg.data.base import IGNORE_INDEX, SegmentationDataModule
from dnlseg.data.folder import predict_folder_loader
from dnlseg.data.loaders import LoaderOptions, build_loader, trainer_rank_and_world_size
from dnlseg.data.synthetic.cityscapes_layout import CITYSCAPES_TRAIN_IDS, write_cityscapes_layout
from dnlseg.data.synthetic.dataset import SyntheticSegmentation
from dnlseg.data.synthetic.scene import (
    CLASS_NAMES,
    check_difficulty,
    check_groups,
    check_image_size,
    check_ink,
    image_shape,
)

# Batches of 8 for training and evaluation (val_batch_size null: batch_size), in the main process.
SYNTHETIC_LOADER = LoaderOptions(batch_size=8, val_batch_size=None, num_workers=0, pin_memory=False)

log = logging.getLogger(__name__)
FEW_WORKERS_WARNING = r"The '\w+' does not have many workers"  # Lightning's, once per loader


class SyntheticDataModule(SegmentationDataModule):
    """The default dataset: synthetic images whose labels need long-range context (``dnlseg.data.synthetic.scene``).

    Items are dicts ``{"image": (3, H, W) float normalised with ImageNet mean/std, "mask": (H, W) int64
    in [0, num_classes) or 255, "name": str}``. Test = val set; predict = val images, or ``predict_dir``.

    Args:
        num_train: training images per epoch (generated on the fly, the same every epoch).
        num_val: validation images (also the test and predict set).
        image_size: side of the square images, or (height, width); each a multiple of 8, >= 32 (e.g. [1024, 2048]
            for whole-Cityscapes-size images).
        difficulty: in [0, 1]: lower stripe contrast and ink saturation, stripe-angle jitter, more noise.
        seed: the dataset seed; images, masks and the train shuffling order follow from it.
        loader: batch sizes (``val_batch_size`` null: ``batch_size``), workers, ``pin_memory``.
        groups: legend entries (texture -> class) per image, 1 to 4. 1: every member has the legend's
            class (a global cue); more: each member must find the entry of its own texture (a pairwise cue).
        texture_levels: each texture also gets its own stripe brightness, an easy local cue for the pairwise
            match (which key shares a member's texture) with ``groups >= 2``. Tests whether a head learns the
            pairwise term (the ablation's ``pairwise`` setting).
        random_textures: each image draws its own textures (the stripe angles turned by one random angle in
            [0, 45) degrees; with ``texture_levels``, levels drawn per group), so no fixed texture stands for a
            fixed binding "this texture -> the ink next to it": with ``groups >= 2``, a head that pools the legend
            into one vector must carry the binding for a continuum of textures, a pairwise term only compares
            a member's texture with each key's (the ablation's ``pairwise_random`` setting).
        ink: "stripes": the keys' stripes carry the class ink; "outline": the keys are grey and the ink lies on a
            thin rim along the inside of their boundary, so the legend's information sits on region boundaries.
            Tests whether a unary term finds boundaries when boundaries carry the information (``boundary``).
        boundary_void: a void (ignore) band along every region boundary, as in Cityscapes. False: labels reach
            the boundaries and label changes are changes of class only (a sharper boundary band for the
            unary-boundary consistency).
        predict_dir: a folder of images (PNG/JPEG, any size, subfolders read) for ``dnlseg predict`` instead
            of the val images.
    """

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 64,
        image_size: int | tuple[int, int] = 128,
        difficulty: float = 0.5,
        seed: int = 0,
        loader: LoaderOptions = SYNTHETIC_LOADER,
        groups: int = 1,
        predict_dir: str | None = None,
        texture_levels: bool = False,
        random_textures: bool = False,
        ink: Literal["stripes", "outline"] = "stripes",
        boundary_void: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("num_val", num_val)):
            if value <= 0:
                raise ValueError(f"{name}={value} must be > 0")
        for side in image_shape(image_size):
            check_image_size("image_size", side)
        check_difficulty(difficulty)
        check_groups(groups)
        check_ink(ink)
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.save_hyperparameters()
        self.num_train = num_train
        self.num_val = num_val
        self.image_size = image_size
        self.difficulty = difficulty
        self.seed = seed
        self.loader = loader
        self.groups = groups
        self.predict_dir = predict_dir
        self.scene: dict[str, Any] = {  # SyntheticSegmentation's scene arguments
            "texture_levels": texture_levels,
            "random_textures": random_textures,
            "ink": ink,
            "boundary_void": boundary_void,
        }
        self.num_classes: int = len(CLASS_NAMES)
        self.class_names: list[str] = list(CLASS_NAMES)
        self.ignore_index: int = IGNORE_INDEX
        self.palette: list[tuple[int, int, int]] = [tuple(trainId2label[t].color) for t in CITYSCAPES_TRAIN_IDS]
        self.train_set: SyntheticSegmentation | None = None
        self.val_set: SyntheticSegmentation | None = None
        self.explained_workers = False

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            args = (self.image_size, self.difficulty, self.seed, self.groups)
            self.train_set = SyntheticSegmentation(self.num_train, "train", *args, **self.scene)
            self.val_set = SyntheticSegmentation(self.num_val, "val", *args, **self.scene)

    def _loader(self, dataset: SyntheticSegmentation, train: bool) -> DataLoader:
        self.explain_generation_in_this_process()
        rank, world_size = trainer_rank_and_world_size(self)
        return build_loader(
            dataset,
            train=train,
            batch_size=self.loader.batch_size if train else self.loader.eval_batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            num_workers=self.loader.num_workers,
            pin_memory=self.loader.pin_memory,
        )

    def explain_generation_in_this_process(self) -> None:
        """With ``num_workers=0`` on a machine with cores to spare, say once where the images come from.

        Lightning warns for every loader with fewer than 2 workers on a machine with 3 or more cores a process ("does
        not have many workers ... may be a bottleneck"), twice for a fit. The synthetic configs generate the images
        in the training process on purpose (sized for a 2-core CPU); this says so once, with the option that
        generates them in parallel instead (the images depend on (seed, split, index) only: the same with any
        number of workers), and leaves out Lightning's warning for this data.
        """
        trainer = getattr(self, "trainer", None)
        if self.loader.num_workers > 0 or self.explained_workers or trainer is None:
            return
        suggested = suggested_max_num_workers(trainer.num_devices)
        if suggested < 2:  # Lightning says nothing either
            return
        self.explained_workers = True
        warnings.filterwarnings("ignore", message=FEW_WORKERS_WARNING, category=PossibleUserWarning)
        log.info(
            "synthetic images are generated in the training process (data.init_args.loader.num_workers=0); "
            "--data.init_args.loader.num_workers=%d generates them in parallel on this machine (the same images)",
            suggested,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None  # setup built it
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.val_set is not None  # setup built it
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is not None:
            return predict_folder_loader(self.predict_dir, self.loader.num_workers, self.loader.pin_memory)
        return self.val_dataloader()

    def write_cityscapes_layout(
        self, root: str | Path, label_kinds: Sequence[str] = ("labelIds", "labelTrainIds")
    ) -> Path:
        """This module's train and val images (its sizes, seed and scene options) in the Cityscapes layout.

        Args:
            root: output folder.
            label_kinds: subset of ("labelIds", "labelTrainIds", "color").
        """
        return write_cityscapes_layout(
            root,
            self.num_train,
            self.num_val,
            self.image_size,
            self.seed,
            label_kinds,
            self.difficulty,
            self.groups,
            **self.scene,
        )
