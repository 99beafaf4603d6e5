"""AttentionMapLogger: figures of the pairwise and unary maps land in the TensorBoard event file (and as PNGs)."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from dnlseg.analysis.attention_consistency import labels_on_grid
from dnlseg.analysis.attention_figure import select_queries
from dnlseg.callbacks import AttentionMapLogger
from dnlseg.callbacks import attention_map_logger as logger_module
from dnlseg.context import ChannelAttention2d, DisentangledNonLocal2d, NonLocal2d
from dnlseg.data.transforms import unnormalize
from tests.helpers import fake_trainer, fit_with_validation, image_tags, tiny_module


@pytest.mark.slow
@pytest.mark.parametrize("context", ["nl", "dnl", "unary_nl"])
def test_logger_writes_one_figure_per_image_into_the_event_file_and_as_png(tmp_path, context):
    callback = AttentionMapLogger(num_images=2, output_dir=tmp_path / "png")
    trainer = fit_with_validation(tmp_path, context, [callback])
    tags = image_tags(Path(trainer.logger.log_dir))
    assert tags == {"attention/decode_head.context/image0": [2], "attention/decode_head.context/image1": [2]}
    assert sorted(p.name for p in callback.written) == [
        f"step000002_{context}_decode_head.context_image0.png",
        f"step000002_{context}_decode_head.context_image1.png",
    ]
    width, height = Image.open(callback.written[0]).size
    # the TensorBoard figure (460 px wide, panels in a grid: taller than wide) at twice its resolution
    assert width == 920 and height > width


@pytest.mark.slow
def test_baseline_without_context_block_logs_nothing_and_does_not_fail(tmp_path):
    callback = AttentionMapLogger(output_dir=tmp_path / "png")
    trainer = fit_with_validation(tmp_path, "baseline", [callback])
    assert image_tags(Path(trainer.logger.log_dir)) == {}
    assert callback.written == []


class Images(torch.utils.data.Dataset):
    """3 normalised 64x64 images with a left/right label split."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        mask = torch.zeros(64, 64, dtype=torch.long)
        mask[:, 32:] = 1
        return {"image": torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(index)), "mask": mask}


@pytest.fixture
def figures(monkeypatch):
    """Replaces the figure drawing by a record of what it was given: [(title, query grid, key grid)]."""
    drawn = []

    def attention_figure(image, mask, maps, index, queries, class_names, ignore_index, title, palette=None):
        drawn.append((title, maps.query_size, maps.key_size, tuple(mask.shape), image.shape))
        return plt.figure(figsize=(1, 1))

    monkeypatch.setattr(logger_module, "attention_figure", attention_figure)
    return drawn


def validation_trainer(global_step=0, sanity_checking=False):
    loader = torch.utils.data.DataLoader(Images())
    return fake_trainer(global_step=global_step, val_dataloaders=loader, sanity_checking=sanity_checking)


def attached(trainer, module):
    """``trainer`` with ``module`` attached to it, as Lightning attaches the module it runs."""
    module.trainer = trainer
    return trainer


def test_figures_are_drawn_at_every_n_th_validation_after_the_sanity_check(figures, tmp_path):
    module = tiny_module(DisentangledNonLocal2d)
    callback = AttentionMapLogger(num_images=1, every_n_validations=3, output_dir=tmp_path)
    callback.on_validation_epoch_end(attached(validation_trainer(sanity_checking=True), module), module)  # not counted
    for step in range(1, 8):
        callback.on_validation_epoch_end(attached(validation_trainer(global_step=10 * step), module), module)
    assert [title for title, *_ in figures] == [f"DNL (decode_head.context), step {s}, image 0" for s in (10, 40, 70)]
    assert [p.name for p in callback.written] == ["step000070_dnl_decode_head.context_image0.png"]
    other_rank = attached(validation_trainer(global_step=100), module)
    other_rank.is_global_zero = False
    callback.on_validation_epoch_end(other_rank, module)
    assert len(figures) == 3


def test_a_block_whose_keys_are_not_pixels_gets_no_figure_and_the_reason_is_logged(figures, caplog):
    # DANet's CAM attends over channels: no map of it lies on the image; the DNL block beside it is drawn
    module = tiny_module(DisentangledNonLocal2d)
    head = module.network.decode_head
    head.context = torch.nn.Sequential(head.context, ChannelAttention2d(16))
    with caplog.at_level("INFO", logger="dnlseg.callbacks.attention_capture"):
        AttentionMapLogger(num_images=1).draw(validation_trainer(), module)
    assert [title for title, *_ in figures] == ["DNL (decode_head.context.0), step 0, image 0"]
    reason = ChannelAttention2d.undefined_analyses["attention_maps"]
    assert f"AttentionMapLogger: no attention_maps for decode_head.context.1: {reason}" in caplog.text


def test_scale_shrinks_the_images_before_the_forward(figures):
    module = tiny_module(DisentangledNonLocal2d)
    AttentionMapLogger(num_images=2).draw(validation_trainer(), module)
    AttentionMapLogger(num_images=2, scale=0.5).draw(validation_trainer(), module)
    # 64 px at output stride 8: an 8 x 8 grid; scaled by 0.5: 32 px, a 4 x 4 grid, the labels resized alike
    assert [(q, k, m, i) for _, q, k, m, i in figures] == [((8, 8), (8, 8), (64, 64), (64, 64, 3))] * 2 + [
        ((4, 4), (4, 4), (32, 32), (32, 32, 3))
    ] * 2
    assert module.training and not module.network.decode_head.context._sinks  # its capture is closed


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="every_n_validations=0"):
        AttentionMapLogger(every_n_validations=0)
    with pytest.raises(ValueError, match="scale=0"):
        AttentionMapLogger(scale=0)


class FourClasses(Images):
    """3 normalised 64x64 images in four vertical stripes of classes 0, 1, 2, 3 (class 3 the narrowest) below an
    ignored band (label 7) larger than any class: a figure that did not skip it would query it first."""

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        mask = torch.zeros(64, 64, dtype=torch.long)
        mask[:, 24:40], mask[:, 40:56], mask[:, 56:] = 1, 2, 3
        mask[:24] = 7  # the module's ignore_index below
        return {**sample, "mask": mask}


class RecordingWriter:
    """Stands in for a TensorBoard SummaryWriter: ``add_figure`` calls as (tag, figure, kwargs)."""

    def __init__(self):
        self.figures = []

    def add_figure(self, tag, figure, **kwargs):
        self.figures.append((tag, figure, kwargs))


@pytest.fixture
def figure_calls(monkeypatch):
    """Replaces the figure drawing by a record of every argument it was given; returns [(arguments, figure)]."""
    calls = []

    def attention_figure(*args):
        figure = plt.figure(figsize=(1, 1))  # 200 x 200 px at the logger's dpi
        calls.append((args, figure))
        return figure

    monkeypatch.setattr(logger_module, "attention_figure", attention_figure)
    return calls


def tensorboard_trainer(tmp_path, dataset, **attributes):
    """A fake trainer with a TensorBoardLogger whose writer records ``add_figure``, and the dataset as its second
    validation loader's (the logger draws from the first)."""
    tensorboard = TensorBoardLogger(tmp_path / "tb")
    tensorboard._experiment = RecordingWriter()
    loaders = [torch.utils.data.DataLoader(dataset), torch.utils.data.DataLoader(Images())]
    datamodule = SimpleNamespace(palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)])
    return fake_trainer(val_dataloaders=loaders, loggers=[tensorboard], datamodule=datamodule, **attributes)


def test_each_figure_gets_the_image_labels_queries_and_names_of_its_image_and_goes_to_tensorboard(
    figure_calls, tmp_path
):
    names = ["road", "car", "sky", "pole"]
    module = tiny_module(DisentangledNonLocal2d, num_classes=4, class_names=names, ignore_index=7)
    trainer = attached(tensorboard_trainer(tmp_path, FourClasses(), global_step=12), module)
    callback = AttentionMapLogger(output_dir=tmp_path / "png" / "nested")  # the defaults: 2 images, 3 classes
    assert callback.written == []
    callback.on_validation_epoch_end(trainer, module)

    assert len(figure_calls) == 2  # num_images=2 of the 3
    for i, ((image, mask, maps, index, queries, class_names, ignore_index, title, palette), _) in enumerate(
        figure_calls
    ):
        sample = FourClasses()[i]
        np.testing.assert_allclose(image, unnormalize(sample["image"]), atol=1e-6)
        assert torch.equal(mask, sample["mask"])
        assert maps.query_size == (8, 8) and index == 0
        grid = labels_on_grid(sample["mask"][None], (8, 8))[0]
        assert queries == select_queries(grid, max_classes=3, ignore_index=7)
        assert {q.label for q in queries if q.kind == "interior"} == {0, 1, 2}  # 3 of the 4 classes, none ignored
        assert class_names == names and ignore_index == 7 and palette == trainer.datamodule.palette
        assert title == f"DNL (decode_head.context), step 12, image {i}"
    writer = trainer.loggers[0].experiment
    assert [(tag, figure, kwargs) for tag, figure, kwargs in writer.figures] == [
        ("attention/decode_head.context/image0", figure_calls[0][1], {"global_step": 12, "close": False}),
        ("attention/decode_head.context/image1", figure_calls[1][1], {"global_step": 12, "close": False}),
    ]
    assert [p.name for p in callback.written] == [
        "step000012_dnl_decode_head.context_image0.png",
        "step000012_dnl_decode_head.context_image1.png",
    ]
    assert Image.open(callback.written[0]).size == (200, 200)  # a 1-inch test figure at dpi 200
    callback.on_validation_epoch_end(
        attached(tensorboard_trainer(tmp_path, FourClasses(), global_step=13), module), module
    )
    assert len(figure_calls) == 4  # the default every_n_validations=1 draws at the next validation too


def test_outside_a_fit_the_figures_carry_the_step_and_head_of_the_loaded_checkpoint(figure_calls, tmp_path):
    """validate / analyze of a step-800 checkpoint: its figures say step 800 (the trainer's global_step is 0 there),
    in the title, the file name and the TensorBoard step; and which head drew them."""
    module = tiny_module(NonLocal2d)
    module.on_load_checkpoint({"global_step": 800, "state_dict": module.state_dict()})
    trainer = attached(tensorboard_trainer(tmp_path, Images(), global_step=0), module)
    trainer.state.fn = "validate"
    callback = AttentionMapLogger(num_images=1, output_dir=tmp_path / "png")
    callback.draw(trainer, module)
    ((args, _),) = figure_calls
    assert args[7] == "NL (decode_head.context), step 800, image 0"
    assert [p.name for p in callback.written] == ["step000800_nl_decode_head.context_image0.png"]
    assert [kwargs["global_step"] for *_, kwargs in trainer.loggers[0].experiment.figures] == [800]


class PlainModule(L.LightningModule):
    """A LightningModule with a context block but without ``evaluated_step`` (not a ``SegmentationModule``)."""

    def __init__(self):
        super().__init__()
        self.network = tiny_module(DisentangledNonLocal2d).network

    def forward(self, images):
        return self.network(images).logits


def test_a_module_without_an_evaluated_step_gets_figures_at_the_trainers_step(figure_calls, tmp_path):
    AttentionMapLogger(num_images=1).draw(tensorboard_trainer(tmp_path, Images(), global_step=12), PlainModule())
    ((args, _),) = figure_calls
    assert args[7] == "DNL (decode_head.context), step 12, image 0"  # find_context_blocks drops "network."


def test_scale_two_enlarges_the_image_bilinearly_without_aligned_corners(figure_calls, tmp_path):
    callback = AttentionMapLogger(num_images=1, scale=2.0)
    callback.draw(tensorboard_trainer(tmp_path, Images()), tiny_module(DisentangledNonLocal2d))
    (image, mask, maps, *_), _ = figure_calls[0]
    enlarged = F.interpolate(Images()[0]["image"][None], scale_factor=2.0, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(image, unnormalize(enlarged[0]), atol=1e-6)
    assert tuple(mask.shape) == (128, 128) and maps.query_size == (16, 16)


def test_nothing_is_drawn_without_a_validation_loader(figure_calls):
    AttentionMapLogger().draw(fake_trainer(val_dataloaders=None), tiny_module(DisentangledNonLocal2d))
    assert figure_calls == []


@pytest.mark.parametrize(
    ("arguments", "named"),
    [({"num_images": 0}, "num_images=0"), ({"max_classes": 0}, "max_classes=0"), ({"every_n_validations": 0}, "")],
)
def test_each_count_below_one_raises_naming_all_three(arguments, named):
    with pytest.raises(ValueError, match=f"{named}.*must all be >= 1$"):
        AttentionMapLogger(**arguments)
    AttentionMapLogger(num_images=1, max_classes=1, every_n_validations=1)  # 1 is allowed


def test_drawing_runs_an_eval_forward_without_a_graph_and_leaves_the_module_as_it_was(figure_calls, tmp_path):
    module = tiny_module(DisentangledNonLocal2d)
    del module.hparams["ignore_index"]  # a module without one: the default 255
    del module.class_names  # a module without class names: none
    before = {k: v.clone() for k, v in module.state_dict().items()}
    AttentionMapLogger(num_images=1).draw(tensorboard_trainer(tmp_path, Images()), module)
    (args, _) = figure_calls[0]
    maps, ignore_index = args[2], args[6]
    assert ignore_index == 255 and args[5] is None
    assert not maps.values.requires_grad and maps.output.grad_fn is None  # under no_grad
    assert module.training  # back in training mode
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # eval mode: BatchNorm statistics untouched
