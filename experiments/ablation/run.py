"""The ablation of docs/science.md section 3 on synthetic settings where the heads must differ, with learning curves.

    make experiment-ablation                                   # the default below: 22 min on the 2-core CPU
    .venv/bin/python experiments/ablation/run.py               # the same
    .venv/bin/python experiments/ablation/run.py --variants nl dnl --settings pairwise --seeds 5 --steps 1000
    .venv/bin/python experiments/ablation/run.py --args "--trainer.accelerator=gpu"     # any CLI override
    .venv/bin/python experiments/ablation/run.py --quick --out /tmp/ablation            # seconds: the machinery
    .venv/bin/python experiments/ablation/run.py --report-only                          # re-read runs/, rewrite

A run is ``dnlseg fit -c <base> -c <setting>`` with one head of ``heads.HEADS`` (``--variants``: a context block of
``dnlseg.context.VARIANTS`` as ``--model.network.context``, CCNet's criss-cross block likewise, or a head of its own
layout -- DANet, ANN, ISA, EMANet, OCR -- as ``--model.network.decode_head``; ``Head.overrides``), seed s as
``--seed_everything`` (the images are the setting's: every run of a setting sees the same data), ``--steps`` steps and a
validation every ``--eval-every`` steps. The
settings are the YAML files ``configs/synthetic/ablation/<setting>.yaml`` (their header says what each tests);
the base recipe, ``configs/synthetic/ablation/base.yaml``, lists the callbacks whose scalars the report reads
(``metrics.py``: what is read and how it is summarised; ``seed_stats.py``: the statistics).

Writes under ``--out`` (default this folder): ``runs/<setting>/<variant>/seed<s>`` (TensorBoard; only seed 0's
``last.ckpt`` is kept, for the attention figures of ``--figure-variants``), ``curves_<setting>.png``,
``figures/<setting>/<variant>/*.png``, ``results.json`` and ``report.md``. A run of some settings or variants keeps
the others' numbers from the ``results.json`` already in ``--out`` (their curves and summaries, marked in the report
with the command and date that trained them); only what this command trains is replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/: the shared _runner
import _runner  # noqa: E402
from heads import HEADS, describe_blocks  # noqa: E402
from metrics import BLOCK_SUMMARY, SUMMARY, block_summary, curves, summary  # noqa: E402
from reference_levels import LEVELS, reference_levels  # noqa: E402
from seed_stats import interval_cell, mean_interval, mean_std, ordering, paired_difference  # noqa: E402

from dnlseg.analysis.tensorboard_scalars import read_scalars  # noqa: E402
from dnlseg.cli.lightning_cli import resolve_config  # noqa: E402
from dnlseg.data import LoaderOptions, SyntheticDataModule  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = _runner.ROOT
SETTINGS_DIR = ROOT / "configs" / "synthetic" / "ablation"
BASE = SETTINGS_DIR / "base.yaml"
DEFAULT_VARIANTS = ("baseline", "nl", "pairwise_nl", "unary_nl", "dnl", "gc")  # others: --variants
DEFAULT_SETTINGS = ("pairwise", "boundary")
# --quick: the whole machinery on tiny runs (the test suite runs it)
QUICK = {"variants": ["nl", "unary_nl", "dnl", "danet"], "settings": ["pairwise"], "seeds": 2, "steps": 25}
QUICK |= {"eval_every": 12}  # DANet: a head of its own layout, two blocks; the probe runs at step 25
QUICK_ARGS = "--data.init_args.image_size=32 --data.init_args.num_val=4 --data.init_args.loader.batch_size=2"
CURVE_PANELS = (("miou", "val mIoU"), ("member", "member-class IoU"), ("ratio", "||dL/du|| : ||dL/dp|| (probe)"))
COLORS = {"baseline": "grey", "nl": "tab:red", "pairwise_nl": "tab:orange", "unary_nl": "tab:green"}
COLORS |= {"dnl": "tab:blue", "dnl_shared_key": "tab:cyan", "gc": "tab:purple", "dnl_official": "navy"}
COLORS |= {"nl_fork": "tab:brown", "danet": "tab:pink", "ccnet": "tab:olive", "annnet": "goldenrod"}
COLORS |= {"isanet": "teal", "emanet": "black", "ocrnet": "magenta"}


def setting_file(name: str) -> Path:
    return SETTINGS_DIR / f"{name}.yaml"


def setting_summary(name: str) -> str:
    """The setting's header comment (its first comment block) as one paragraph."""
    lines = []
    for line in setting_file(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line and not line.startswith("dnlseg fit"))


def setting_steps(opts, name: str) -> int:
    """``--steps``, else ``trainer.max_steps`` of the base recipe composed with the setting (the setting's, else the
    base recipe's, else its family's)."""
    if opts.steps is not None:
        return opts.steps
    return composed_max_steps(opts.base, setting_file(name))


@functools.cache
def composed_max_steps(base: Path, setting: Path) -> int:
    return int(resolve_config(base, "-c", str(setting))["trainer"]["max_steps"])


def setting_levels(opts, setting: str) -> dict[str, float]:
    """Member-class IoU of the idealised predictors of ``reference_levels.py`` on the setting's val images."""
    config = resolve_config(opts.base, "-c", str(setting_file(setting)), *shlex.split(opts.args))
    if not config["data"]["class_path"].endswith("SyntheticDataModule"):
        return {}
    init_args = config["data"]["init_args"]
    data = SyntheticDataModule(**{**init_args, "loader": LoaderOptions(**init_args["loader"])})
    data.setup("validate")
    return reference_levels([data.val_set.sample(i) for i in range(len(data.val_set))])


def log_dir(out: Path, setting: str, variant: str, seed: int) -> Path:
    return out / "runs" / setting / variant / f"seed{seed}"


def fit_command(opts, setting: str, variant: str, seed: int) -> list[str]:
    return _runner.dnlseg_command(
        "fit",
        *_runner.fit_args(
            [opts.base, setting_file(setting)],
            opts.out / "runs" / setting,
            variant,
            f"seed{seed}",
            *HEADS[variant].overrides(),
            f"--seed_everything={seed}",
            f"--trainer.max_steps={setting_steps(opts, setting)}",
            f"--trainer.val_check_interval={opts.eval_every}",
            *shlex.split(opts.args),
        ),
    )


def analyze(opts, setting: str, variant: str) -> list[str]:
    """``dnlseg analyze`` on seed 0's last checkpoint: attention figures of the first 2 val images."""
    run = log_dir(opts.out, setting, variant, 0)
    target = opts.out / "figures" / setting / variant
    shutil.rmtree(target, ignore_errors=True)
    device = [f"--accelerator={a.split('=', 1)[1]}" for a in shlex.split(opts.args) if a.startswith("--trainer.acc")]
    # analyze runs the config's analyses; the base recipe's do not draw (no map logger while training): add one
    callbacks = yaml.safe_load((run / "config.yaml").read_text())["trainer"].get("callbacks") or []
    drawn = any(c.get("class_path", "").endswith(".AttentionMapLogger") for c in callbacks if isinstance(c, dict))
    logger = [] if drawn else ["--trainer.callbacks+=dnlseg.callbacks.AttentionMapLogger"]
    cmd = _runner.dnlseg_command(
        "analyze", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        "--output", str(target), "--num_images", "2", "--limit_batches", "1", *device, *logger,
    )  # fmt: skip
    _runner.run(cmd, quiet=True)
    for numbers in ("metrics.json", "metrics.md"):
        (target / numbers).unlink(missing_ok=True)  # the report's numbers are the training runs' own
    return sorted(p.name for p in target.glob("*.png"))


def train_all(opts, runs: list[tuple[int, str, str]]) -> dict[str, float]:
    """Every (seed, setting, variant) fit, ``opts.jobs`` at a time on cpu_count / jobs threads; their wall times."""
    walls: dict[str, float] = {}
    threads = max(1, (_runner.os.cpu_count() or 1) // opts.jobs) if opts.jobs > 1 else 0
    for setting in dict.fromkeys(s for _, s, _ in runs):  # composed once, here: jsonargparse is not thread-safe
        setting_steps(opts, setting)

    def fit(run: tuple[int, str, str]) -> None:
        seed, setting, variant = run
        directory = log_dir(opts.out, setting, variant, seed)
        shutil.rmtree(directory, ignore_errors=True)  # a rerun must not mix its events with an old run's
        cmd = fit_command(opts, setting, variant, seed)
        walls[f"{setting}/{variant}/seed{seed}"] = _runner.run(cmd, threads=threads, quiet=opts.jobs > 1)
        for ckpt in (directory / "checkpoints").glob("*.ckpt"):  # only seed 0's last.ckpt is needed (figures)
            if seed > 0 or ckpt.name != "last.ckpt":
                ckpt.unlink()

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:  # each worker waits on one dnlseg process
        list(pool.map(fit, runs))
    return walls


def walls_from_files(opts) -> dict[str, float]:
    """Wall times of runs a stopped experiment did not record: config.yaml written (fit start, after the process's
    start-up) -> last write to its TensorBoard event file; ``total`` from the first start to the last write."""
    walls, starts, ends = {}, [], []
    for setting in opts.settings:
        for variant in opts.variants:
            for seed in range(opts.seeds):
                directory = log_dir(opts.out, setting, variant, seed)
                events = list(directory.glob("events.out.tfevents.*"))
                if not (directory / "config.yaml").is_file() or not events:
                    continue
                start, end = (directory / "config.yaml").stat().st_mtime, max(e.stat().st_mtime for e in events)
                walls[f"{setting}/{variant}/seed{seed}"] = end - start
                starts.append(start)
                ends.append(end)
    if starts:
        walls["total"] = max(ends) - min(starts)
    return walls


def collect(opts) -> tuple[dict, dict]:
    """From the logs under ``--out``: (results, facts). results: setting -> variant -> seed -> {"summary": {...},
    "curves": {name: (steps, values)}, "blocks": {block: {...}}}; facts: setting -> variant -> block ->
    ``heads.BlockFacts`` as a dict (the keys of a query, why a number is not logged), from the run's config.yaml."""
    results: dict[str, dict[str, dict[int, dict]]] = {}
    facts: dict[str, dict[str, dict[str, dict]]] = {}
    for setting in opts.settings:
        for variant in opts.variants:
            directories = {seed: log_dir(opts.out, setting, variant, seed) for seed in range(opts.seeds)}
            directories = {seed: d for seed, d in directories.items() if d.is_dir()}
            configs = [d / "config.yaml" for d in directories.values() if (d / "config.yaml").is_file()]
            described = describe_blocks(configs[0]) if configs else {}
            order = list(described)  # the network's order: a head's first block leads
            for seed, directory in directories.items():
                scalars = read_scalars(directory)
                entry = {"summary": summary(scalars, order), "curves": curves(scalars, order)}
                entry["blocks"] = block_summary(scalars, order)
                results.setdefault(setting, {}).setdefault(variant, {})[seed] = entry
            if directories:
                facts.setdefault(setting, {})[variant] = {b: dataclasses.asdict(f) for b, f in described.items()}
    return results, facts


def git_origin(path: Path) -> dict[str, str | None]:
    """{"commit", "date"} of the last commit that changed ``path`` (None outside a checkout, or never committed)."""
    done = subprocess.run(
        ["git", "log", "-1", "--format=%h %cs", "--", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    commit, _, day = done.stdout.strip().partition(" ")
    return {"commit": commit or None, "date": day or None}


def head_commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes under src/ or experiments/), None outside one."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "src", "experiments"], cwd=ROOT, capture_output=True)
    changed = any(line and not line.endswith(b"results.json") for line in dirty.stdout.splitlines())
    return done.stdout.strip() + ("-dirty" if changed else "")


def own_record(saved: dict, path: Path) -> dict:
    """Who trained the runs of a saved results.json: its command, date, commit and load (an older file without a
    date or commit: those of the last git commit that changed it)."""
    record = {key: saved.get(key) for key in ("command", "date", "commit", "load_average")}
    if record["date"] is None and record["commit"] is None:
        record |= git_origin(path)
    return record


def from_json(saved: dict) -> dict:
    """``results`` of a results.json back in ``collect``'s form (integer seeds, arrays)."""

    def run(r: dict) -> dict:
        entry = {"summary": r["summary"], "curves": {k: (np.asarray(s), np.asarray(v, dtype=float)) for k, (s, v) in
                                                     r["curves"].items()}}  # fmt: skip
        return entry | {"blocks": r.get("blocks", {})}

    return {
        setting: {variant: {int(seed): run(r) for seed, r in runs.items()} for variant, runs in by_variant.items()}
        for setting, by_variant in saved.items()
    }


def merge(saved: dict, path: Path, fresh: dict, fresh_facts: dict, report_only: bool) -> tuple[dict, dict, dict]:
    """(results, facts, kept): the runs read from the logs, and for each (setting, variant) they lack, the saved
    results.json's (``saved``, at ``path``). kept: "<setting>/<variant>" -> the record of the command that trained a
    saved entry, for those not trained by the command this report is of (re-read with ``report_only``: the saved
    file's own command is that command)."""
    old, old_facts, old_kept = from_json(saved.get("results", {})), saved.get("blocks", {}), saved.get("kept", {})
    record = own_record(saved, path) if saved else {}
    results: dict = {}
    facts: dict = {}
    kept: dict = {}
    for setting in dict.fromkeys([*old, *fresh]):
        here, before = fresh.get(setting, {}), old.get(setting, {})
        names = [*here, *before]
        for variant in [v for v in HEADS if v in names] + [v for v in dict.fromkeys(names) if v not in HEADS]:
            if variant in here:
                results.setdefault(setting, {})[variant] = here[variant]
                facts.setdefault(setting, {})[variant] = fresh_facts.get(setting, {}).get(variant, {})
                continue
            results.setdefault(setting, {})[variant] = before[variant]
            facts.setdefault(setting, {})[variant] = old_facts.get(setting, {}).get(variant, {})
            origin = old_kept.get(f"{setting}/{variant}")
            if origin is not None or not report_only:
                kept[f"{setting}/{variant}"] = origin or record
    return results, facts, kept


def label(variant: str) -> str:
    return HEADS[variant].label if variant in HEADS else variant


def per_seed(runs: dict[int, dict], key: str) -> dict[int, float]:
    return {seed: run["summary"][key] for seed, run in runs.items()}


def fmt(pair: tuple[float, float], digits: int) -> str:
    mean, std = pair
    return "-" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def curve_figure(setting: str, by_variant: dict[str, dict[int, dict]], out: Path, levels: dict[str, float]) -> str:
    """Per panel: each variant's mean over seeds (line) ± std (band) at every logged step; the member-class IoU
    panel also shows the reference ``levels`` (dashed)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for ax, (key, title) in zip(axes, CURVE_PANELS, strict=True):
        for variant, runs in by_variant.items():
            series = [r["curves"][key] for r in runs.values() if key in r["curves"]]
            if not series:
                continue
            steps = series[0][0]
            values = np.stack([v for s, v in series if np.array_equal(s, steps)])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
            color = COLORS.get(variant)
            ax.plot(steps, mean, color=color, label=f"{label(variant)} (n={len(values)})")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        ax.set_xlabel("training step")
        ax.set_ylabel(title)
        ax.set_title(f"{setting}: {title}", fontsize=10)
        ax.grid(alpha=0.3)
        if key == "ratio":
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.axhline(1.0, color="grey", ls="--", lw=1)
        if key == "member":
            for (guess, level), style in zip(levels.items(), (":", "--"), strict=False):
                if level < 1.0:  # "legend, no match" is 1 with one legend entry: nothing to read against
                    ax.axhline(level, color="black", ls=style, lw=1, label=f"{LEVELS[guess]} ({level:.2f})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Setting '{setting}': mean ± std over seeds", fontsize=11)
    fig.tight_layout()
    name = f"curves_{setting}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def facts(by_variant: dict[str, dict[int, dict]]) -> list[str]:
    """Generated from the numbers: DNL - NL on every metric, then every other pair on the accuracy metrics."""
    lines = []
    if "dnl" in by_variant and "nl" in by_variant:
        for key, (title, _) in SUMMARY.items():
            diff = paired_difference(per_seed(by_variant["dnl"], key), per_seed(by_variant["nl"], key))
            if diff.seeds:
                lines.append(ordering("DNL", "NL", diff, title))
    names = list(by_variant)
    excluded = []
    for key in ("final_member", "auc_member", "final_miou"):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if {a, b} == {"dnl", "nl"}:
                    continue
                diff = paired_difference(per_seed(by_variant[a], key), per_seed(by_variant[b], key))
                if diff.excludes_zero:
                    excluded.append(ordering(label(a), label(b), diff, SUMMARY[key][0]))
                else:
                    excluded.append(None)
    found = [line for line in excluded if line]
    lines.append("")
    lines.append(
        f"Other pairs on member-class IoU (final, AUC) and final mIoU: {len(found)} of {len(excluded)} intervals "
        "exclude 0" + (":" if found else ".")
    )
    lines += found
    return lines


def levels_line(levels: dict[str, float]) -> list[str]:
    if not levels:
        return []
    shown = ", ".join(f"{LEVELS[guess]} **{level:.3f}**" for guess, level in levels.items())
    reading = (
        "A head above the second has learned some of the match; at it, only which inks the legend holds."
        if levels["legend"] < 1.0
        else "With one legend entry, knowing the legend decides every member: a head is read against the first."
    )
    return [
        f"Reference levels of the member-class IoU on these val images (`reference_levels.py`, exact expected "
        f"values of idealised predictors that guess a member's class among the 4 foreground classes / among the "
        f"legend's classes): {shown}. {reading}",
        "",
    ]


BLOCK_KEYS = tuple(BLOCK_SUMMARY)
NL_BLOCK = "decode_head.context"  # NL's one block: what every head's block is compared with


def per_seed_block(runs: dict[int, dict], block: str, key: str) -> dict[int, float]:
    return {seed: run.get("blocks", {}).get(block, {}).get(key, math.nan) for seed, run in runs.items()}


def blocks_of(runs: dict[int, dict], facts: dict[str, dict]) -> list[str]:
    """A variant's blocks: in the network's order (``facts``), then any other its runs logged numbers for."""
    logged = [b for run in runs.values() for b in run.get("blocks", {})]
    return list(dict.fromkeys([*facts, *logged]))


def coupling(runs: dict[int, dict], block: str) -> str:
    """Whether the block's unary gradient moves with its pairwise logits, read from the cross-sensitivity."""
    values = per_seed_block(runs, block, "cross")
    diff = mean_interval(values)
    if diff.seeds == 0:
        return "n/a"
    if all(v == 0 for v in values.values() if math.isfinite(v)):
        return "**no**: exactly 0"
    if diff.seeds >= 2 and diff.low > 0:
        return "**yes**"
    return "not shown"


def heads_section(setting: str, by_variant: dict[str, dict[int, dict]], facts: dict[str, dict]) -> list[str]:
    """Per head and block: the u : p ratio, the cross-sensitivity, the consistencies (mean over seeds and its 95%
    bootstrap interval) with the reason where a number has no meaning; the head's final mIoU; then each head's
    block against NL's and each head's accuracy against NL, paired by seed."""
    rows = [(v, b) for v, runs in by_variant.items() for b in blocks_of(runs, facts.get(v, {}))]
    if not rows:
        return []
    without = [label(v) for v, runs in by_variant.items() if v != "baseline" and not blocks_of(runs, facts.get(v, {}))]
    notes: dict[str, int] = {}

    def undefined(reason: str) -> str:
        notes.setdefault(reason, len(notes) + 1)
        return f"n/a [{notes[reason]}]"

    lines = [
        f"### The heads' two terms, block by block (`{setting}`)",
        "",
        "Each block of each head (a head with several -- DANet's PAM and CAM, ANN's fusion and context blocks, ISA's "
        "long- and short-range stages -- has a row per block): the keys of one query's softmax; `SeparationProbe`'s "
        "||dL/du|| : ||dL/dp|| (geometric mean over the probe steps, and over the second half; **bound √n**: where the "
        "block attends with one softmax of p_ij + u_j, dL/du_j is the column sum over queries of dL/dp_ij, so the "
        "ratio is at most the square root of n, the most queries that share one key -- docs/science.md section 8) "
        "and cross-sensitivity "
        "(the relative change of dL/du under a 1% change of the pairwise logits, mean over the probe steps: 0 when the "
        "two gradients are separate, as in DNL; above 0 when they are coupled, as in NL); the consistencies at the "
        "last validation; the head's final mIoU. Cells: mean over seeds [95% percentile-bootstrap interval of the "
        "mean]. **coupled?**: yes when the cross-sensitivity's interval lies above 0, no when it is exactly 0 at every "
        "probe. n/a [k]: the number has no meaning for the block, or is not computed on its keys (note k below, the "
        "reason the block or the callback gives); `not logged`: no number and no known reason.",
        "",
        "| head | block | keys of a query | " + " | ".join(BLOCK_SUMMARY[k][0] for k in BLOCK_KEYS[:2])
        + " | bound √n | " + " | ".join(BLOCK_SUMMARY[k][0] for k in BLOCK_KEYS[2:])
        + " | coupled? | final val mIoU | seeds |",
        "|---|---|---|" + "---|" * (len(BLOCK_KEYS) + 4),
    ]  # fmt: skip
    shown_before = set()
    for variant, block in rows:
        runs, info = by_variant[variant], facts.get(variant, {}).get(block, {})
        reasons = info.get("undefined", {})
        cells = []
        for key in BLOCK_KEYS:
            diff = mean_interval(per_seed_block(runs, block, key))
            if diff.seeds:
                cells.append(interval_cell(diff, BLOCK_SUMMARY[key][1]))
            else:
                cells.append(undefined(reasons[key]) if key in reasons else "not logged")
        first = variant not in shown_before
        shown_before.add(variant)
        miou = interval_cell(mean_interval(per_seed(runs, "final_miou")), 3) if first else ""
        name = label(variant) if first else ""
        n = info.get("queries_per_key", 0)
        bound = f"{math.sqrt(n):.2f}" if info.get("column_sum") and n else "-"
        lines.append(
            f"| {name} | `{block}` | {info.get('keys', '?')} | " + " | ".join(cells[:2]) + f" | {bound} | "
            + " | ".join(cells[2:]) + f" | {coupling(runs, block)} | {miou} | {len(runs)} |"
        )  # fmt: skip
    lines.append("")
    lines += [f"[{n}] {reason}.  " for reason, n in notes.items()]
    if without:
        lines += ["", f"No per-block numbers for {', '.join(without)}: their runs were read before results.json kept "
                  "them (see the kept runs at the top)."]  # fmt: skip
    lines += ["", *head_facts(by_variant, rows), ""]
    return lines


def head_facts(by_variant: dict[str, dict[int, dict]], rows: list[tuple[str, str]]) -> list[str]:
    """Each block against NL's (u : p ratio, cross-sensitivity) and each head's accuracy against NL's."""
    if "nl" not in by_variant:
        return []
    nl = by_variant["nl"]
    lines = ["Each block against NL's block, and each head's accuracy against NL's (paired by seed):", ""]
    for variant, block in rows:
        if variant == "nl":
            continue
        for key in ("ratio", "cross"):
            diff = paired_difference(per_seed_block(by_variant[variant], block, key), per_seed_block(nl, NL_BLOCK, key))
            if diff.seeds:
                lines.append(ordering(f"{label(variant)} `{block}`", "NL", diff, BLOCK_SUMMARY[key][0]))
    for variant in dict.fromkeys(v for v, _ in rows):
        if variant in ("nl", "dnl"):  # DNL - NL: in the facts above
            continue
        for key in ("final_miou", "final_member"):
            diff = paired_difference(per_seed(by_variant[variant], key), per_seed(nl, key))
            if diff.seeds:
                lines.append(ordering(label(variant), "NL", diff, SUMMARY[key][0]))
    return lines


def setting_section(
    setting: str,
    by_variant: dict[str, dict[int, dict]],
    figure: str,
    shots: dict,
    levels: dict[str, float],
    facts_of: dict[str, dict] | None = None,
) -> list[str]:
    keys = list(SUMMARY)
    lines = [
        f"## Setting `{setting}`",
        "",
        setting_summary(setting),
        "",
        *levels_line(levels),
        "| variant | " + " | ".join(SUMMARY[k][0] for k in keys) + " | seeds |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    for variant, runs in by_variant.items():
        cells = [fmt(mean_std(list(per_seed(runs, k).values())), SUMMARY[k][1]) for k in keys]
        lines.append(f"| {label(variant)} | " + " | ".join(cells) + f" | {len(runs)} |")
    lines += ["", f"![{figure}]({figure})", "", "### Facts generated from the numbers", "", *facts(by_variant), ""]
    lines += heads_section(setting, by_variant, facts_of or {})
    for variant, files in shots.items():
        lines += [f"Attention maps, {label(variant)}, seed 0, last step: "]
        lines += [f"![{variant} {f}](figures/{setting}/{variant}/{f})" for f in files[:1]]
        lines.append("")
    return lines


def per_seed_table(results: dict) -> list[str]:
    keys = ("final_miou", "auc_miou", "final_member", "auc_member", "steps90_member", "ratio")
    lines = ["| setting | variant | seed | " + " | ".join(SUMMARY[k][0] for k in keys) + " |"]
    lines.append("|---|---|---|" + "---|" * len(keys))
    for setting, by_variant in results.items():
        for variant, runs in by_variant.items():
            for seed, run in sorted(runs.items()):
                cells = []
                for k in keys:
                    v = run["summary"][k]
                    cells.append("-" if not math.isfinite(v) else f"{v:.{SUMMARY[k][1]}f}")
                lines.append(f"| {setting} | {label(variant)} | {seed} | " + " | ".join(cells) + " |")
    return lines


def per_seed_block_table(results: dict) -> list[str]:
    lines = ["| setting | head | block | seed | " + " | ".join(BLOCK_SUMMARY[k][0] for k in BLOCK_KEYS) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(BLOCK_KEYS))
    for setting, by_variant in results.items():
        for variant, runs in by_variant.items():
            for seed, run in sorted(runs.items()):
                for block, numbers in run.get("blocks", {}).items():
                    cells = [
                        "-" if not math.isfinite(numbers.get(k, math.nan)) else f"{numbers[k]:.{BLOCK_SUMMARY[k][1]}f}"
                        for k in BLOCK_KEYS
                    ]
                    lines.append(f"| {setting} | {label(variant)} | `{block}` | {seed} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def kept_lines(kept: dict[str, dict]) -> list[str]:
    """The (setting, variant)s whose numbers come from an earlier command's results.json, grouped by it."""
    groups: dict[str, list[str]] = {}
    for key, record in kept.items():
        setting, variant = key.split("/", 1)
        when = ", ".join(f"{k} {record[k]}" for k in ("date", "commit") if record.get(k)) or "date not recorded"
        loads = record.get("load_average") or {}
        load = f"; load average before {loads['before']}, after {loads['after']}" if "before" in loads else ""
        origin = f"`{record.get('command') or 'an unrecorded command'}` ({when}{load})"
        groups.setdefault(origin, []).append(f"{setting}/{label(variant)}")
    if not groups:
        return []
    lines = ["", "**Kept from earlier commands** (not trained by the command above; their numbers are read from "
             "results.json as that command left them, on the code of its date):"]  # fmt: skip
    lines += [f"- {origin}: {', '.join(names)}." for origin, names in groups.items()]
    return lines


def write_report(
    opts,
    results: dict,
    walls: dict,
    loads: dict,
    figures: dict,
    shots: dict,
    levels: dict[str, dict[str, float]],
    facts_of: dict | None = None,
    kept: dict | None = None,
    steps: dict[str, int] | None = None,
) -> Path:
    steps = steps or {s: setting_steps(opts, s) for s in results}
    per_run = {k: v for k, v in walls.items() if k != "total"}
    total = walls.get("total", sum(per_run.values()))
    lines = [
        "# Ablation: which heads differ, and how they learn (docs/science.md sections 2-3)",
        "",
        f"Command: `{opts.trained_by}`"
        + ("" if opts.trained_by == opts.command else f" (this report re-read its logs: `{opts.command}`)")
        + "  ",
        f"Base recipe `{_runner.shown(opts.base)}`; settings {', '.join(f'`{s}`' for s in results)} "
        f"(`configs/synthetic/ablation/<setting>.yaml`); steps per run: "
        + ", ".join(f"{s} {steps.get(s, '?')}" for s in results)
        + ", validation every "
        f"{opts.eval_every}; seeds {', '.join(map(str, range(opts.seeds)))}; extra overrides `{opts.args or '-'}`.  ",
        f"Machine: {_runner.machine_line(opts.threads)}.  ",
    ]
    if per_run:
        mean = sum(per_run.values()) / len(per_run)
        how = (
            "start-up and validations included"
            if opts.walls_source == "measured"
            else "from the runs' file times: config.yaml written -> last TensorBoard event, so each process's "
            "start-up before its config (~10 s) is not included"
        )
        lines.append(
            f"Wall time: **{total / 60:.1f} min** for {len(per_run)} runs, {opts.jobs} at a time ({mean:.0f} s per "
            f"run on average, {how}). Load average (1, 5, 15 min) before: "
            f"{loads.get('before', 'not recorded')}; after: {loads.get('after', 'not recorded')}. Other engineers "
            "share this 2-core machine: a time measured under load is an upper bound of the idle-machine time."
        )
    lines += kept_lines(kept or {})
    lines += [
        "",
        "Metrics (`experiments/ablation/metrics.py`): curves of val mIoU and of the **member-class IoU** (mean IoU "
        "of the 4 foreground classes, whose pixels are mostly members: the pixels that need context); **AUC** = "
        "the curve's mean over training (trapezoid / step span); **steps to 90%** = first validation step at 90% of "
        "the run's best; **dL/du : dL/dp** = `SeparationProbe`'s unary over pairwise logit-gradient norm, geometric "
        "mean over the probe steps (NL: its implicit decomposition; only blocks with both terms); the two "
        "consistency metrics (`AttentionConsistency`, 1 = chance) at the last validation. Per block of each head "
        "(its own section): also the **cross-sensitivity** (`SeparationProbe`: the relative change of dL/du under a "
        "1% change of the pairwise logits; 0 = the two gradients are separate).",
        "",
        "Statistics (`experiments/ablation/seed_stats.py`): mean ± sample std over seeds; for a difference A - B, "
        "a 95% percentile-bootstrap interval of the mean per-seed difference, **paired by seed** (seed s of A vs "
        "seed s of B), 10,000 resamples of the seeds (scipy.stats.bootstrap). An ordering is stated only when that "
        f"interval excludes 0. With {opts.seeds} seeds the bootstrap distribution has few distinct values: the "
        "intervals are crude (and narrower than t-intervals); read them as a screen, not a test.",
        "",
    ]
    for setting, by_variant in results.items():
        section_facts = (facts_of or {}).get(setting)
        lines += setting_section(
            setting, by_variant, figures[setting], shots.get(setting, {}), levels[setting], section_facts
        )
    lines += [
        "## Reading",
        "",
        "<!-- HUMAN READING: written by a person from the numbers above after the run; the script never writes "
        "it. A rerun replaces it with this placeholder. -->",
        "_To be written from this run's numbers: what agrees and what disagrees with the paper._",
        "",
        "## Appendix: per-seed numbers",
        "",
        *per_seed_table(results),
        "",
        *per_seed_block_table(results),
        "",
        "The tuning measurements that chose the settings and the budget: `experiments/ablation/README.md`.",
        "",
    ]
    path = opts.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def jsonable(results: dict) -> dict:
    def run(r: dict) -> dict:
        curves = {k: [np.asarray(s).tolist(), np.asarray(v).tolist()] for k, (s, v) in r["curves"].items()}
        return {"summary": r["summary"], "curves": curves, "blocks": r.get("blocks", {})}

    return {
        setting: {variant: {seed: run(r) for seed, r in runs.items()} for variant, runs in by_variant.items()}
        for setting, by_variant in results.items()
    }


def parse(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(HEADS), default=list(DEFAULT_VARIANTS))
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="configs/synthetic/ablation/")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per variant and setting")
    parser.add_argument("--steps", type=int, default=None, help="default: each setting's trainer.max_steps")
    parser.add_argument("--eval-every", type=int, default=50, help="validation interval: the curves' resolution")
    parser.add_argument("--base", type=Path, default=BASE, help="the base recipe every setting overrides")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--args", default="", help="extra LightningCLI overrides for every fit, one string")
    parser.add_argument("--jobs", type=int, default=2, help="fits at a time, each on cpu_count/jobs threads")
    parser.add_argument("--figure-variants", nargs="*", default=["nl", "dnl"], help="attention figures (seed 0)")
    parser.add_argument("--report-only", action="store_true", help="re-read existing runs, do not train")
    parser.add_argument("--quick", action="store_true", help=f"tiny runs that test the machinery: {QUICK}")
    opts = parser.parse_args(argv)
    if opts.quick:
        for key, value in QUICK.items():
            setattr(opts, key, value)
        opts.args = f"{QUICK_ARGS} {opts.args}".strip()
        opts.figure_variants = ["danet"]  # figures of PAM (CAM's weights lie on channels: none)
    for name in ("jobs", "seeds", "steps", "eval_every"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(opts, name)} must be >= 1")
    missing = [s for s in opts.settings if not setting_file(s).is_file()]
    if missing:
        known = sorted(p.stem for p in SETTINGS_DIR.glob("*.yaml") if p != BASE)
        parser.error(f"--settings: no {', '.join(missing)} in {_runner.shown(SETTINGS_DIR)} (there: {known})")
    opts.command = "make experiment-ablation" if argv == [] else shlex.join(["python", "run.py", *(argv or [])])
    opts.trained_by = opts.command
    opts.walls_source = "measured"  # or "files": walls_from_files
    opts.threads = max(1, (_runner.os.cpu_count() or 1) // opts.jobs) if opts.jobs > 1 else None
    return opts


def main(argv: list[str] | None = None) -> Path:
    opts = parse(sys.argv[1:] if argv is None else argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    previous = opts.out / "results.json"
    saved = json.loads(previous.read_text()) if previous.is_file() else {}
    walls, loads = {}, {}
    record = {"command": opts.command, "date": date.today().isoformat(), "commit": head_commit()}
    if opts.report_only and saved:  # keep the wall times and loads of the run that trained
        walls, loads = saved.get("walls_s", {}), saved.get("load_average", {})
        opts.walls_source = saved.get("walls_source", opts.walls_source)
        opts.trained_by = saved.get("command", opts.trained_by)  # this command only re-reads the logs
        record = {k: v for k, v in own_record(saved, previous).items() if k != "load_average"}
    if opts.report_only and not walls:  # e.g. a stopped experiment: no results.json of its own
        walls, opts.walls_source = walls_from_files(opts), "files"
    if not opts.report_only:
        # seed-major: an experiment stopped early still has every variant and setting at the first seeds
        runs = [(seed, s, v) for seed in range(opts.seeds) for s in opts.settings for v in opts.variants]
        loads["before"] = _runner.load_average()
        start = time.perf_counter()
        walls = train_all(opts, runs)
        walls["total"] = time.perf_counter() - start
        loads["after"] = _runner.load_average()
    fresh, fresh_facts = collect(opts)
    results, facts_of, kept = merge(saved, previous, fresh, fresh_facts, opts.report_only)
    steps = saved.get("steps", {}) if opts.report_only else {}
    steps = {s: n for s, n in saved.get("steps", {}).items() if s in results} | {
        s: steps.get(s, setting_steps(opts, s)) for s in fresh
    }
    old_levels = saved.get("reference_levels", {})
    levels = {s: old_levels[s] if s not in fresh and s in old_levels else setting_levels(opts, s) for s in results}
    figures = {s: curve_figure(s, by_variant, opts.out, levels[s]) for s, by_variant in results.items()}
    shots: dict[str, dict[str, list[str]]] = {}
    for setting in results:
        for variant in opts.figure_variants:
            target = opts.out / "figures" / setting / variant
            if (log_dir(opts.out, setting, variant, 0) / "checkpoints" / "last.ckpt").is_file():
                shots.setdefault(setting, {})[variant] = analyze(opts, setting, variant)
            elif f"{setting}/{variant}" in kept and any(target.glob("*.png")):  # drawn by the command that trained it
                shots.setdefault(setting, {})[variant] = sorted(p.name for p in target.glob("*.png"))
    previous.write_text(
        json.dumps(
            {
                **record,
                "steps": steps,
                "seeds": opts.seeds,
                "walls_s": walls,
                "walls_source": opts.walls_source,
                "load_average": loads,
                "reference_levels": levels,
                "kept": kept,
                "blocks": facts_of,
                "results": jsonable(results),
            },
            indent=1,
        )  # fmt: skip
        + "\n"
    )
    report = write_report(opts, results, walls, loads, figures, shots, levels, facts_of, kept, steps)
    print(report.read_text())
    return report


if __name__ == "__main__":
    main()
