"""AttentionMapLogger: figures of the pairwise and unary maps land in the TensorBoard event file (and as PNGs)."""

from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dnlseg.callbacks import AttentionMapLogger
from tests.callbacks.test_attention_consistency import fit_with_validation


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
