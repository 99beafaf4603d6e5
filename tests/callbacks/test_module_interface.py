"""The module interface of the analysis callbacks: any module with the declared members works, a missing member
is named at setup."""

from types import SimpleNamespace
from typing import Protocol

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dnlseg.callbacks import SeparationProbe
from dnlseg.callbacks.module_interface import (
    LossTerms,
    check_module,
    class_names_of,
    evaluated_step_of,
    ignore_index_of,
    inference_mode_of,
    protocol_members,
)
from dnlseg.context import DisentangledNonLocal2d
from dnlseg.errors import ModuleInterfaceError, UserError
from tests.helpers import fake_trainer

MISSING_LOSSES = (
    "trainer.callbacks: SeparationProbe needs the module's `losses` (protocol "
    "dnlseg.callbacks.module_interface.LossTerms), which {module} does not have: add it to the module or remove "
    "SeparationProbe from trainer.callbacks"
)


class PlainSegmenter(L.LightningModule):
    """A two-class segmenter with a DNL block that is not a ``SegmentationModule``; ``losses`` optional."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.block, self.classifier = (
            nn.Conv2d(3, 8, 3, padding=1),
            DisentangledNonLocal2d(8),
            nn.Conv2d(8, 2, 1),
        )
        nn.init.ones_(self.block.out_norm.weight)  # the loss depends on the attention
        self.training_steps = 0

    def forward(self, images):
        return self.classifier(self.block(self.stem(images)))

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        return nn.functional.cross_entropy(self(batch["image"]), batch["mask"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WithLosses(PlainSegmenter):
    def losses(self, batch):
        return {"loss": nn.functional.cross_entropy(self(batch["image"]), batch["mask"])}


def batch():
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(2, 3, 6, 8, generator=generator),
        "mask": torch.randint(0, 2, (2, 6, 8), generator=generator),
    }


def test_a_module_with_the_protocols_members_is_probed_whatever_its_class():
    module, probe, trainer = WithLosses(), SeparationProbe(every_n_steps=1), fake_trainer()
    assert isinstance(module, LossTerms) and not isinstance(PlainSegmenter(), LossTerms)
    probe.setup(trainer, module, "fit")
    probe.on_train_batch_end(trainer, module, None, batch(), 0)
    logged = trainer.loggers[0].metrics[0]
    assert set(logged) == {
        f"separation/block/{t}" for t in ("pairwise_logit_grad", "unary_logit_grad", "cross_sensitivity")
    }
    assert logged["separation/block/pairwise_logit_grad"] > 0 and logged["separation/block/cross_sensitivity"] == 0.0


def test_a_module_without_a_member_is_refused_at_setup_naming_the_member_and_the_protocol():
    with pytest.raises(ModuleInterfaceError) as raised:
        SeparationProbe().setup(fake_trainer(), PlainSegmenter(), "fit")
    assert str(raised.value) == MISSING_LOSSES.format(module="PlainSegmenter")
    assert isinstance(raised.value, UserError)  # the dnlseg command shows it as one line


def test_a_fit_with_a_callback_the_module_cannot_serve_stops_before_the_first_step():
    module = PlainSegmenter()
    trainer = L.Trainer(
        max_steps=2, callbacks=[SeparationProbe(every_n_steps=1)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    with pytest.raises(ModuleInterfaceError, match=r"^trainer\.callbacks: SeparationProbe needs the module's `losses`"):
        trainer.fit(module, DataLoader([batch()], batch_size=None))
    assert module.training_steps == 0


def test_every_declared_member_is_checked_methods_and_attributes():
    class Described(Protocol):
        class_names: list[str]

        def losses(self, batch): ...

    assert protocol_members(Described) == ["losses", "class_names"]
    check_module(SeparationProbe(), SimpleNamespace(losses=None, class_names=[]), (Described,))
    with pytest.raises(ModuleInterfaceError, match=r"`class_names` \(protocol .*Described\), which SimpleNamespace"):
        check_module(SeparationProbe(), SimpleNamespace(losses=None), (Described,))


def test_optional_members_have_their_defaults():
    bare = nn.Linear(1, 1)
    assert (ignore_index_of(bare), class_names_of(bare), evaluated_step_of(bare, 7), inference_mode_of(bare)) == (
        255, None, 7, "whole",
    )  # fmt: skip
    full = SimpleNamespace(
        hparams={"ignore_index": 9}, class_names=["a"], evaluated_step=3, inference=SimpleNamespace(mode="slide")
    )
    assert (ignore_index_of(full), class_names_of(full), evaluated_step_of(full, 7), inference_mode_of(full)) == (
        9, ["a"], 3, "slide",
    )  # fmt: skip
