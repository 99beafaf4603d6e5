"""What the ablation reads from one run's TensorBoard log: learning curves and the numbers that summarise them.

Everything comes from scalars the framework already logs (``dnlseg.analysis.tensorboard_scalars.read_scalars``):

    val/mIoU, val/IoU/<class>                    the module's validation metrics, every ``val_check_interval``
    separation/<block>/unary_logit_grad          SeparationProbe: ||dL/du|| over its sampled query rows
    separation/<block>/pairwise_logit_grad       SeparationProbe: ||dL/dp||
    separation/<block>/cross_sensitivity         SeparationProbe: relative change of dL/du under a change of p
    val/pairwise_category_consistency[/<block>]  AttentionConsistency, per validation (plain: the first block)
    val/unary_boundary_consistency[/<block>]

Derived per run (``summary``):

    member IoU(t)     = mean over the foreground classes c of IoU_c(t)   (every member belongs to one of them;
                        keys too, but they are few and locally decidable)
    AUC               = (1 / (t_last - t_first)) * integral of the curve over the validation steps (trapezoid):
                        the mean value over training, in the curve's own units
    steps to 90%      = the first validation step where the curve reaches 0.9 * its maximum
    u : p ratio       = ||dL/du|| / ||dL/dp|| at each probe step; summarised as its geometric mean over the run
                        and over the steps after half the last one (only blocks with both terms log both)

and per context block (``block_summary``; a head with several blocks -- DANet's PAM and CAM, ANN's fusion and
context, ISA's two stages -- has one entry each): the u : p ratio as above, the cross-sensitivity (arithmetic mean
over the probe steps, and over the second half: it is exactly 0 for DNL, so a geometric mean would not do) and the
two consistencies at the last validation. ``summary``'s ratio is that of the first block with both terms, in the
network's order when ``order`` is given (else in name order).
"""

from __future__ import annotations

import math

import numpy as np

MIOU = "val/mIoU"
PAIRWISE = "val/pairwise_category_consistency"
UNARY = "val/unary_boundary_consistency"
BACKGROUND = "background"

# summary key -> (label in tables, digits)
SUMMARY = {
    "final_miou": ("final val mIoU", 3),
    "auc_miou": ("mIoU AUC", 3),
    "steps90_miou": ("steps to 90% of best mIoU", 0),
    "final_member": ("final member-class IoU", 3),
    "auc_member": ("member-class IoU AUC", 3),
    "steps90_member": ("steps to 90% of best member IoU", 0),
    "pairwise_category": ("pairwise-category consistency", 2),
    "unary_boundary": ("unary-boundary consistency", 2),
    "ratio": ("dL/du : dL/dp (geo. mean)", 2),
    "ratio_late": ("dL/du : dL/dp (2nd half)", 2),
}

# per block: block_summary key -> (label in tables, digits); the head's summary's labels where they are the same
BLOCK_SUMMARY = {
    "ratio": SUMMARY["ratio"],
    "ratio_late": SUMMARY["ratio_late"],
    "cross": ("cross-sensitivity (mean)", 3),
    "cross_late": ("cross-sensitivity (2nd half)", 3),
    "pairwise_category": SUMMARY["pairwise_category"],
    "unary_boundary": SUMMARY["unary_boundary"],
}


Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


def member_curve(scalars: dict[str, Curve]) -> Curve | None:
    """Mean IoU of the foreground classes at each validation step (classes NaN at a step are left out)."""
    tags = [t for t in scalars if t.startswith("val/IoU/") and t.rsplit("/", 1)[1] != BACKGROUND]
    if not tags:
        return None
    steps = scalars[tags[0]][0]
    values = np.nanmean(np.stack([scalars[t][1] for t in tags]), axis=0)
    return steps, values


def separation_blocks(scalars: dict[str, Curve]) -> list[str]:
    """The blocks that logged a ``separation/<block>/...`` scalar, in name order."""
    return sorted({tag.split("/")[1] for tag in scalars if tag.startswith("separation/")})


def ratio_curve(scalars: dict[str, Curve], block: str) -> Curve | None:
    """||dL/du|| / ||dL/dp|| of ``block`` at each probe step; None if it lacks either term."""
    unary, pair = f"separation/{block}/unary_logit_grad", f"separation/{block}/pairwise_logit_grad"
    if unary not in scalars or pair not in scalars:
        return None
    (su, u), (sp, p) = scalars[unary], scalars[pair]
    if not np.array_equal(su, sp):
        raise ValueError(f"{unary} and {pair} were logged at different steps")
    return np.asarray(su), np.asarray(u, dtype=float) / np.asarray(p, dtype=float)


def first_ratio_curve(scalars: dict[str, Curve], order: list[str] | None = None) -> Curve | None:
    """The ratio curve of the first block (in ``order``, else in name order) that logged both terms."""
    names = separation_blocks(scalars)
    ordered = [b for b in order or [] if b in names] + [b for b in names if b not in (order or [])]
    for block in ordered:
        ratio = ratio_curve(scalars, block)
        if ratio is not None:
            return ratio
    return None


def curves(scalars: dict[str, Curve], order: list[str] | None = None) -> dict[str, Curve]:
    """``{"miou", "member", "ratio"}`` -> (steps, values), for those the run logged (``ratio``: the first block's,
    ``order`` as in ``first_ratio_curve``)."""
    out = {"miou": scalars.get(MIOU), "member": member_curve(scalars), "ratio": first_ratio_curve(scalars, order)}
    return {k: (np.asarray(v[0]), np.asarray(v[1], dtype=float)) for k, v in out.items() if v is not None}


def area_under_curve(steps: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid integral over the steps divided by their span: the curve's mean level (one point: that point)."""
    if len(steps) == 0:
        return math.nan
    if len(steps) == 1:
        return float(values[0])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def steps_to_fraction(steps: np.ndarray, values: np.ndarray, fraction: float = 0.9) -> float:
    """The first step at which ``values`` reaches ``fraction`` of their maximum (NaN for an empty curve)."""
    if len(steps) == 0:
        return math.nan
    reached = np.flatnonzero(values >= fraction * values.max())
    return float(steps[reached[0]])


def geometric_mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.log(values).mean())) if values.size else math.nan


def last(scalars: dict[str, Curve], tag: str) -> float:
    return float(scalars[tag][1][-1]) if tag in scalars and len(scalars[tag][1]) else math.nan


def summary(scalars: dict[str, Curve], order: list[str] | None = None) -> dict[str, float]:
    """The ``SUMMARY`` numbers of one run (NaN where the run did not log what they need)."""
    c = curves(scalars, order)
    out = dict.fromkeys(SUMMARY, math.nan)
    for name in ("miou", "member"):
        if name in c:
            steps, values = c[name]
            out[f"final_{name}"] = float(values[-1])
            out[f"auc_{name}"] = area_under_curve(steps, values)
            out[f"steps90_{name}"] = steps_to_fraction(steps, values)
    out["pairwise_category"] = last(scalars, PAIRWISE)
    out["unary_boundary"] = last(scalars, UNARY)
    if "ratio" in c:
        steps, ratio = c["ratio"]
        out["ratio"] = geometric_mean(ratio)
        out["ratio_late"] = geometric_mean(ratio[steps > steps[-1] / 2])
    return out


def mean_of(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def block_summary(scalars: dict[str, Curve], blocks: list[str]) -> dict[str, dict[str, float]]:
    """{block: the ``BLOCK_SUMMARY`` numbers of one run} for ``blocks`` (NaN where the run logged nothing for it)."""
    out = {}
    for block in blocks:
        numbers = dict.fromkeys(BLOCK_SUMMARY, math.nan)
        ratio = ratio_curve(scalars, block)
        if ratio is not None:
            steps, values = ratio
            numbers["ratio"] = geometric_mean(values)
            numbers["ratio_late"] = geometric_mean(values[steps > steps[-1] / 2])
        cross = scalars.get(f"separation/{block}/cross_sensitivity")
        if cross is not None:
            steps, values = np.asarray(cross[0]), np.asarray(cross[1], dtype=float)
            numbers["cross"] = mean_of(values)
            numbers["cross_late"] = mean_of(values[steps > steps[-1] / 2])
        numbers["pairwise_category"] = last(scalars, f"{PAIRWISE}/{block}")
        numbers["unary_boundary"] = last(scalars, f"{UNARY}/{block}")
        out[block] = numbers
    return out
