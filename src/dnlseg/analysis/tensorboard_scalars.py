"""Read the scalars of a run back from its TensorBoard event files, for reports, experiments and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} over every event file below ``log_dir``, sorted by step."""
    collected: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            collected.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    result = {}
    for tag, pairs in collected.items():
        pairs.sort()
        result[tag] = (np.array([s for s, _ in pairs]), np.array([v for _, v in pairs]))
    return result
