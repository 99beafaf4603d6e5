"""AttentionMapLogger: figures of the pairwise and unary maps land in the TensorBoard event file (and as PNGs)."""

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dnlseg.callbacks import AttentionMapLogger
from dnlseg.callbacks import attention_map_logger as logger_module
from dnlseg.context import DisentangledNonLocal2d
from tests.helpers import fake_trainer, fit_with_validation, tiny_module


def image_tags(log_dir) -> dict[str, list[int]]:
    """{tag: steps} of the images in the run's event files."""
    tags = {}
    for event_file in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            tags.setdefault(tag, []).extend(e.step for e in accumulator.Images(tag))
    return tags


@pytest.mark.slow
@pytest.mark.parametrize("context", ["nl", "dnl", "unary_nl"])
def test_logger_writes_one_figure_per_image_into_the_event_file_and_as_png(tmp_path, context):
    callback = AttentionMapLogger(num_images=2, output_dir=tmp_path / "png")
    trainer = fit_with_validation(tmp_path, context, [callback])
    tags = image_tags(Path(trainer.logger.log_dir))
    assert tags == {"attention/decode_head.context/image0": [2], "attention/decode_head.context/image1": [2]}
    assert sorted(p.name for p in callback.written) == [
        "step000002_decode_head.context_image0.png",
        "step000002_decode_head.context_image1.png",
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


def test_figures_are_drawn_at_every_n_th_validation_after_the_sanity_check(figures, tmp_path):
    module = tiny_module(DisentangledNonLocal2d)
    callback = AttentionMapLogger(num_images=1, every_n_validations=3, output_dir=tmp_path)
    callback.on_validation_epoch_end(validation_trainer(sanity_checking=True), module)  # not counted
    for step in range(1, 8):
        callback.on_validation_epoch_end(validation_trainer(global_step=10 * step), module)
    assert [title for title, *_ in figures] == [f"decode_head.context, step {s}, image 0" for s in (10, 40, 70)]
    assert [p.name for p in callback.written] == ["step000070_decode_head.context_image0.png"]
    other_rank = validation_trainer(global_step=100)
    other_rank.is_global_zero = False
    callback.on_validation_epoch_end(other_rank, module)
    assert len(figures) == 3


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
