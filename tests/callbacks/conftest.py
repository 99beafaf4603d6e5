"""A tiny in-process fit shared by the callback tests."""

import lightning as L
import pytest
import torch

from dnlseg.context import DisentangledNonLocal2d, NonLocal2d
from dnlseg.data import SyntheticDataModule
from dnlseg.models import SegmentationModule

CONTEXTS = {"nl": NonLocal2d, "dnl": DisentangledNonLocal2d}


def tiny_fit(tmp_path, context="dnl", callbacks=(), max_steps=4, **trainer_kwargs):
    """Fit a resnet18 + context head for a few steps on 64 px synthetic images; returns the trainer."""
    L.seed_everything(0, workers=True)
    data = SyntheticDataModule(num_train=8, num_val=2, image_size=64, batch_size=2, seed=0)
    model = SegmentationModule(
        num_classes=data.num_classes,
        class_names=data.class_names,
        encoder_name="resnet18",
        head_channels=16,
        aux_channels=8,
        context=CONTEXTS[context] if context else None,
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name=context or "baseline"),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
        accelerator="cpu",
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(model, data)
    return trainer


@pytest.fixture
def fit(tmp_path):
    return lambda **kwargs: tiny_fit(tmp_path, **kwargs)


def final_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}
