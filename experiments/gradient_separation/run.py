"""Does DNL separate the pairwise and unary gradients, and NL not? Train both, same seed and data, and report.

    make experiment-separation
    .venv/bin/python experiments/gradient_separation/run.py                      # same thing
    .venv/bin/python experiments/gradient_separation/run.py --seed 1 --args "--trainer.max_steps=3000"
    .venv/bin/python experiments/gradient_separation/run.py --configs my_nl.yaml my_dnl.yaml --names nl dnl

Seed pinned by ``--seed`` (default 0), passed to both runs as ``--seed_everything``. Writes, under
``--out`` (default this folder): ``runs/`` (TensorBoard logs and checkpoints), ``*.png`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/: the shared _runner
import _runner  # noqa: E402

from dnlseg.analysis.tensorboard_scalars import read_scalars  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = _runner.ROOT
BLOCK = "decode_head.context"
COLORS = {"nl": "tab:red", "dnl": "tab:blue"}


def train(config: Path, name: str, seed: int, out: Path, extra: list[str]) -> tuple[Path, float]:
    """One fit through the dnlseg CLI in a fresh process; returns its log dir and wall time."""
    args = _runner.fit_args(config, out / "runs", name, f"seed{seed}", f"--seed_everything={seed}", *extra)
    wall = _runner.run(_runner.dnlseg_command("fit", *args))
    return out / "runs" / name / f"seed{seed}", wall


def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_series(ax, scalars, tag, label, color, style="-", window=25):
    if tag not in scalars:
        return
    steps, values = scalars[tag]
    values = smooth(values, window)
    ax.plot(steps[len(steps) - len(values) :], values, style, color=color, label=label)


def figures(runs: dict[str, dict], out: Path) -> list[str]:
    files = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, scalars in runs.items():
        c = COLORS.get(name)
        plot_series(axes[0], scalars, f"branch_grad/{BLOCK}/pairwise", f"{name} pairwise (query+key)", c, "-")
        plot_series(axes[0], scalars, f"branch_grad/{BLOCK}/unary", f"{name} unary (W_m)", c, "--")
        plot_series(axes[0], scalars, f"branch_grad/{BLOCK}/value", f"{name} value", c, ":")
        plot_series(axes[1], scalars, f"branch_grad/{BLOCK}/unary_over_pairwise", f"{name} unary / pairwise", c)
    axes[0].set(yscale="log", xlabel="step", title="branch parameter-gradient norms (smoothed)")
    axes[1].set(yscale="log", xlabel="step", title="unary / pairwise parameter-gradient ratio")
    for ax in axes:
        ax.legend(fontsize=8)
    files.append(save(fig, out / "branch_gradients.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, scalars in runs.items():
        c = COLORS.get(name)
        plot_series(axes[0], scalars, f"separation/{BLOCK}/pairwise_logit_grad", f"{name} ||dL/dp||", c, "-o", 1)
        plot_series(axes[0], scalars, f"separation/{BLOCK}/unary_logit_grad", f"{name} ||dL/du||", c, "--s", 1)
        cross = scalars.get(f"separation/{BLOCK}/cross_sensitivity")
        if cross is not None:
            # DNL's value is exactly 0: drawn at the floor of the log axis so it stays visible.
            axes[1].plot(cross[0], np.maximum(cross[1], 1e-12), "-o", color=c, label=f"{name}")
    axes[0].set(yscale="log", xlabel="step", title="logit-gradient norms (SeparationProbe)")
    axes[1].set(yscale="log", xlabel="step", title="cross-sensitivity of dL/du to p (0 drawn at 1e-12)")
    for ax in axes:
        ax.legend(fontsize=8)
    files.append(save(fig, out / "cross_sensitivity.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, scalars in runs.items():
        if "val/mIoU" in scalars:
            ax.plot(*scalars["val/mIoU"], "-o", color=COLORS.get(name), label=name)
    ax.set(xlabel="step", ylabel="val mIoU", title="validation mIoU")
    ax.legend()
    files.append(save(fig, out / "val_miou.png"))
    return files


def save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def last(scalars: dict, tag: str) -> float:
    return float(scalars[tag][1][-1]) if tag in scalars else float("nan")


def summary_rows(runs: dict[str, dict]) -> list[dict]:
    rows = []
    for name, s in runs.items():
        cross = s.get(f"separation/{BLOCK}/cross_sensitivity", (np.array([]), np.array([np.nan])))[1]
        p_logit = s.get(f"separation/{BLOCK}/pairwise_logit_grad", (None, np.array([np.nan])))[1]
        u_logit = s.get(f"separation/{BLOCK}/unary_logit_grad", (None, np.array([np.nan])))[1]
        half = len(p_logit) // 2
        rows.append(
            {
                "name": name,
                "miou": last(s, "val/mIoU"),
                "best_miou": float(s["val/mIoU"][1].max()) if "val/mIoU" in s else float("nan"),
                "cross_median": float(np.median(cross)),
                "cross_max": float(np.max(cross)),
                "logit_ratio": float(np.median(u_logit[half:] / p_logit[half:])),
                "param_ratio": float(np.median(s[f"branch_grad/{BLOCK}/unary_over_pairwise"][1][-200:]))
                if f"branch_grad/{BLOCK}/unary_over_pairwise" in s
                else float("nan"),
            }
        )
    return rows


def reading(rows: dict[str, dict]) -> list[str]:
    """Sentences that follow from the numbers, written by the script so a rerun cannot contradict them."""
    nl, dnl = rows.get("nl"), rows.get("dnl")
    lines = []
    if nl and dnl:
        if dnl["cross_max"] == 0.0:
            lines.append(
                "- **Separation holds exactly for DNL.** At every probe the unary-logit gradient of DNL did not move "
                "when the pairwise logits were perturbed (cross-sensitivity 0 to the last bit), as the sum of two "
                "separately normalised softmaxes implies."
            )
        else:
            lines.append(f"- DNL's cross-sensitivity was not exactly zero (max {dnl['cross_max']:.3g}): investigate.")
        if nl["cross_median"] > 1e-3:
            lines.append(
                f"- **NL couples the terms.** Its median cross-sensitivity was {nl['cross_median']:.3g} (a 1% "
                "perturbation of p changes dL/du by this fraction): the gradient reaching its unary part depends on "
                "the pairwise logits, through the shared softmax."
            )
        else:
            lines.append(
                f"- NL's cross-sensitivity stayed small (median {nl['cross_median']:.3g}): in this trained network "
                "the coupling the paper describes is weak."
            )
        ratio_nl, ratio_dnl = nl["logit_ratio"], dnl["logit_ratio"]
        lines.append(
            f"- Logit-gradient balance ||dL/du|| / ||dL/dp|| over the second half of training: NL {ratio_nl:.3g}, "
            f"DNL {ratio_dnl:.3g}. "
            + (
                "NL's unary share is the larger one, in line with the paper's remark that NL mostly learns the unary "
                "term."
                if ratio_nl > ratio_dnl
                else "DNL's unary share is the larger one here; the paper's 'NL learns mostly the unary term' is "
                "not what these gradient magnitudes show on this data."
            )
        )
        diff = dnl["miou"] - nl["miou"]
        lines.append(
            f"- Accuracy: final val mIoU NL {nl['miou']:.4f}, DNL {dnl['miou']:.4f} (DNL {diff:+.4f}). One seed of a "
            "short CPU run: a difference of a point or two is within seed noise; see the ablation experiment for "
            "several seeds."
        )
    return lines


def write_report(out: Path, rows: list[dict], files: list[str], walls: dict, command: str) -> Path:
    by_name = {r["name"]: r for r in rows}
    lines = [
        "# Gradient separation: NL vs DNL",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_runner.machine_line()}. Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items()),
        "",
        "Both runs use the same seed, data, encoder, head and schedule; only the context block differs. "
        "`BranchGradientMonitor` logs parameter-gradient norms per branch every step; `SeparationProbe` logs "
        "the logit gradients ||dL/dp||, ||dL/du|| and the cross-sensitivity ||g_u(p + dp) - g_u(p)|| / ||g_u(p)|| "
        "(upstream gradient held fixed, ||dp|| = 1% of ||p||) every 50 steps. For NL, p and u are its implicit "
        "decomposition p_ij + u_j (docs/science.md section 2).",
        "",
        "| run | final val mIoU | best val mIoU | cross-sensitivity median (max) | dL/du : dL/dp (2nd half) "
        "| unary/pairwise param-grad ratio (last 200 steps) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['miou']:.4f} | {r['best_miou']:.4f} | {r['cross_median']:.3g} ({r['cross_max']:.3g}) "
            f"| {r['logit_ratio']:.3g} | {r['param_ratio']:.3g} |"
        )
    lines += ["", "## Reading", "", *reading(by_name), ""]
    lines += [f"![{f}]({f})" for f in files]
    lines += [
        "",
        "The parameter-gradient ratio exists only for DNL (NL has no separate unary branch: its unary term lives "
        "inside W_q and W_k). TensorBoard shows the same series side by side: "
        "`tensorboard --logdir experiments/gradient_separation/runs`, tab *Custom Scalars*.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        nargs=2,
        type=Path,
        default=[ROOT / "configs/synthetic/nl.yaml", ROOT / "configs/synthetic/dnl.yaml"],
    )
    parser.add_argument("--names", nargs=2, default=["nl", "dnl"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--args", default="", help="extra LightningCLI overrides for both runs, one string")
    parser.add_argument("--report-only", action="store_true", help="re-read existing runs, do not train")
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)

    runs, walls = {}, {}
    for config, name in zip(opts.configs, opts.names, strict=True):
        log_dir = opts.out / "runs" / name / f"seed{opts.seed}"
        if not opts.report_only:
            log_dir, walls[name] = train(config.resolve(), name, opts.seed, opts.out, shlex.split(opts.args))
        runs[name] = read_scalars(log_dir)
    rows = summary_rows(runs)
    files = figures(runs, opts.out)
    command = "make experiment-separation" + (f' ARGS="{opts.args}"' if opts.args else "")
    report = write_report(opts.out, rows, files, walls, command)
    print(report.read_text())


if __name__ == "__main__":
    main()
