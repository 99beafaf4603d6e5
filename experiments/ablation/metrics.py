"""What the ablation reads from one run's TensorBoard log: learning curves and the numbers that summarise them.

Everything comes from scalars the framework already logs (``dnlseg.analysis.tensorboard_scalars.read_scalars``):

    val/mIoU, val/IoU/<class>                    the module's validation metrics, every ``val_check_interval``
    separation/<block>/unary_logit_grad          SeparationProbe: ||dL/du|| over its sampled query rows
    separation/<block>/pairwise_logit_grad       SeparationProbe: ||dL/dp||
    val/pairwise_category_consistency            AttentionConsistency, per validation
    val/unary_boundary_consistency

Derived per run (``summary``):

    member IoU(t)     = mean over the foreground classes c of IoU_c(t)   (every member belongs to one of them;
                        keys too, but they are few and locally decidable)
    AUC               = (1 / (t_last - t_first)) * integral of the curve over the validation steps (trapezoid):
                        the mean value over training, in the curve's own units
    steps to 90%      = the first validation step where the curve reaches 0.9 * its maximum
    u : p ratio       = ||dL/du|| / ||dL/dp|| at each probe step; summarised as its geometric mean over the run
                        and over the steps after half the last one (only blocks with both terms log both)
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


Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


def member_curve(scalars: dict[str, Curve]) -> Curve | None:
    """Mean IoU of the foreground classes at each validation step (classes NaN at a step are left out)."""
    tags = [t for t in scalars if t.startswith("val/IoU/") and t.rsplit("/", 1)[1] != BACKGROUND]
    if not tags:
        return None
    steps = scalars[tags[0]][0]
    values = np.nanmean(np.stack([scalars[t][1] for t in tags]), axis=0)
    return steps, values


def ratio_curve(scalars: dict[str, Curve]) -> Curve | None:
    """||dL/du|| / ||dL/dp|| of the first context block at each probe step; None if it lacks either term."""
    unary = sorted(t for t in scalars if t.startswith("separation/") and t.endswith("/unary_logit_grad"))
    for tag in unary:
        pair = tag.replace("/unary_logit_grad", "/pairwise_logit_grad")
        if pair in scalars:
            (su, u), (sp, p) = scalars[tag], scalars[pair]
            if not np.array_equal(su, sp):
                raise ValueError(f"{tag} and {pair} were logged at different steps")
            return su, u / p
    return None


def curves(scalars: dict[str, Curve]) -> dict[str, Curve]:
    """``{"miou", "member", "ratio"}`` -> (steps, values), for those the run logged."""
    out = {"miou": scalars.get(MIOU), "member": member_curve(scalars), "ratio": ratio_curve(scalars)}
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


def summary(scalars: dict[str, Curve]) -> dict[str, float]:
    """The ``SUMMARY`` numbers of one run (NaN where the run did not log what they need)."""
    c = curves(scalars)
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
