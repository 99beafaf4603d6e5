"""Member-class IoU of two idealised predictors on a setting's val images: the levels the curves are read against.

Both know everything a member's own pixels and the image's legend say, and guess only a member's class:

    local only           uniformly among the foreground classes: a head that never sees the legend from a member;
    legend, no match     uniformly among the classes of the image's keys: a head that knows which inks the legend
                         holds but not which key shares the member's texture (right on 1/G of member pixels
                         with G legend entries; with G = 1 always right: the global cue alone solves it).

Background and key pixels count as right (locally decidable); void pixels do not count. The expected confusion
matrix is exact: a member pixel of class c adds 1/K to cell (c, k) for each of its K candidate classes k; the IoU
of class k is then ``C[k, k] / (sum_j C[k, j] + sum_j C[j, k] - C[k, k])`` on the expected counts, summed over the
setting's val images like the validation metric. A head whose member-class IoU is above "legend, no match" has
learned some of the match; one at it has learned only which inks the legend holds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dnlseg.data.synthetic.scene import IGNORE_INDEX, NUM_FOREGROUND, SyntheticSample

LEVELS = {"local": "local only", "legend": "legend, no match"}


def expected_confusion(samples: Iterable[SyntheticSample], guess: str) -> np.ndarray:
    """(classes, classes) expected confusion (true row, predicted column) of predictor ``guess`` in ``LEVELS``."""
    if guess not in LEVELS:
        raise ValueError(f"guess={guess!r} must be one of {list(LEVELS)}")
    classes = NUM_FOREGROUND + 1
    confusion = np.zeros((classes, classes))
    for s in samples:
        valid = s.mask != IGNORE_INDEX
        member = valid & s.member
        decided = valid & ~member  # background and keys: right
        np.add.at(confusion, (s.mask[decided], s.mask[decided]), 1.0)
        if guess == "local":
            candidates = np.arange(1, classes)
        else:
            candidates = np.unique(s.mask[s.key & valid])
        true = s.mask[member].astype(np.int64)  # (M,)
        for k in candidates:
            np.add.at(confusion[:, k], true, 1.0 / len(candidates))
    return confusion


def member_iou(confusion: np.ndarray) -> float:
    """Mean IoU of the foreground classes (1 .. C-1) present in the labels or the predictions."""
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    fg = union[1:] > 0
    return float((tp[1:][fg] / union[1:][fg]).mean())


def reference_levels(samples: list[SyntheticSample]) -> dict[str, float]:
    """``{"local": IoU, "legend": IoU}``: member-class IoU of each idealised predictor on ``samples``."""
    return {guess: member_iou(expected_confusion(samples, guess)) for guess in LEVELS}
