"""How many training steps do SIGTERM and SIGKILL lose, and do 2 DDP processes compute what 1 process does?

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python experiments/reliability/measure.py
    .venv/bin/python experiments/reliability/measure.py --kills 4 --terms 2 --seed 0

Steps lost: the shipped ``configs/synthetic/dnl.yaml`` with its checkpoint interval (``last.ckpt`` every
``every_n_train_steps`` = 50 steps) and schedule (400 steps, validation every 100), shrunk to 32 px images,
batch 2 and an 8-channel head so that a step takes a fraction of a second (steps lost depend on the interval
and on when the signal comes, not on the step's cost). Each trial signals the fit at a step drawn uniformly
from [50, 250) (seeded by ``--seed``); lost = steps completed when the signal came - ``global_step`` of the
``last.ckpt`` that ``--ckpt_path last`` resumes from.

DDP parity: the same tiny model (no dropout), 12 images, global batch 4, 4 steps, validation after steps 2
and 4: one process with batch 4 against two CPU processes (gloo, SyncBatchNorm) with batch 2 each. Max
absolute differences of the per-step logged losses, of every weight and buffer after 4 steps, of val/mIoU.

Writes ``results.md`` next to this file and prints it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/: the shared _runner
import _runner  # noqa: E402

from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.cli.lightning_cli import resolve_config

HERE = Path(__file__).resolve().parent
ROOT = _runner.ROOT
SHIPPED = ROOT / "configs/synthetic/dnl.yaml"


def environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(HERE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def shrunk_config(directory: Path, step_file: Path | None = None, **trainer) -> Path:
    """The shipped config, checkpoint interval and schedule kept, model and images shrunk."""
    config = resolve_config(SHIPPED)  # the recipe merged with its family's shared file
    config["trainer"].update(enable_progress_bar=False, enable_model_summary=False, **trainer)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(directory / "runs")
    callbacks = [c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("SeparationProbe")]
    if step_file is not None:
        callbacks.append({"class_path": "progress.StepFile", "init_args": {"path": str(step_file)}})
    config["trainer"]["callbacks"] = callbacks
    config["model"]["network"].update(head_channels=8, aux_channels=8)
    config["data"]["init_args"].update(num_train=1200, num_val=4, image_size=32)
    config["data"]["init_args"]["loader"]["batch_size"] = 2
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def checkpoint_interval() -> int:
    callbacks = resolve_config(SHIPPED)["trainer"]["callbacks"]
    return next(c["init_args"]["every_n_train_steps"] for c in callbacks if c["init_args"].get("save_last"))


def read_step(path: Path) -> int:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return -1


def signal_trial(sig: int, at_step: int) -> dict:
    """One fit signalled at ``at_step``; the steps done then, the checkpointed step, the exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        step_file = directory / "step"
        config = shrunk_config(directory, step_file)
        process = subprocess.Popen(
            _runner.dnlseg_command("fit", "-c", str(config)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
            cwd=ROOT,
        )
        while process.poll() is None and read_step(step_file) < at_step:
            time.sleep(0.01)
        done = read_step(step_file)
        process.send_signal(sig)
        _, err = process.communicate(timeout=600)
        last = directory / "runs/dnl/version_0/checkpoints/last.ckpt"
        saved = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.exists() else 0
        return {"done": done, "saved": saved, "lost": max(0, done - saved), "status": process.returncode}


def ddp_run(directory: Path, processes: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = shrunk_config(
        directory,
        max_steps=4,
        val_check_interval=2,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=processes,
        strategy="ddp" if processes > 1 else "auto",
        sync_batchnorm=processes > 1,
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["network"]["dropout"] = 0.0
    cfg["data"]["init_args"]["num_train"] = 12
    cfg["data"]["init_args"]["loader"]["batch_size"] = 4 // processes
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 4
    if processes > 1:
        cfg["trainer"]["plugins"].append({"class_path": "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin"})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    _runner.run(_runner.dnlseg_command("fit", "-c", str(config)), env=environment(), capture=True)
    return directory / "runs/dnl/version_0"


def ddp_parity() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        one, two = (ddp_run(Path(tmp) / f"p{n}", n) for n in (1, 2))
        s1, s2 = read_scalars(one), read_scalars(two)
        w1 = torch.load(one / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        w2 = torch.load(two / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    out = {}
    for tag in ("train/loss", "train/main_loss", "train/aux_loss", "val/mIoU", "val/pixel_acc"):
        assert s1[tag][0].tolist() == s2[tag][0].tolist(), tag
        out[tag] = float(np.abs(s1[tag][1] - s2[tag][1]).max())
    floats = [k for k in w1 if w1[k].is_floating_point()]
    out["weights and buffers"] = max(float((w1[k] - w2[k]).abs().max()) for k in floats)
    out["largest weight magnitude"] = max(float(w1[k].abs().max()) for k in floats)
    out["first-step loss"] = float(s1["train/loss"][1][0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=4, help="SIGKILL trials")
    parser.add_argument("--terms", type=int, default=2, help="SIGTERM trials")
    parser.add_argument("--seed", type=int, default=0, help="draws the signal steps")
    parser.add_argument("--skip-ddp", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    interval = checkpoint_interval()
    started = time.perf_counter()
    trials = []
    for name, sig, count in (("SIGTERM", signal.SIGTERM, args.terms), ("SIGKILL", signal.SIGKILL, args.kills)):
        for _ in range(count):
            at = rng.randrange(50, 250)
            result = signal_trial(sig, at)
            trials.append({"signal": name, "at": at, **result})
            print(trials[-1], flush=True)
    parity = {} if args.skip_ddp else ddp_parity()

    lines = [
        "# Reliability measurements",
        "",
        "Written by `experiments/reliability/measure.py` (module docstring: what is measured and how); "
        f"{_runner.machine_line()}, "
        f"seed {args.seed}, wall time {time.perf_counter() - started:.0f} s.",
        "",
        f"## Steps lost at the default checkpoint interval ({interval} steps, `configs/synthetic/dnl.yaml`)",
        "",
        "| signal | sent after step | steps done | last.ckpt step | steps lost | exit status |",
        "|---|---|---|---|---|---|",
    ]
    for t in trials:
        lines.append(f"| {t['signal']} | {t['at']} | {t['done']} | {t['saved']} | {t['lost']} | {t['status']} |")
    for name in ("SIGTERM", "SIGKILL"):
        lost = [t["lost"] for t in trials if t["signal"] == name]
        if lost:
            lines.append(f"| **{name}** | | | | **max {max(lost)}, mean {np.mean(lost):.1f}** | |")
    lines += [
        "",
        f"SIGTERM finishes the step in progress and saves it: nothing is lost. SIGKILL loses the steps since the "
        f"last periodic `last.ckpt`: 0 to {interval - 1}, {(interval - 1) / 2:.1f} on average for a kill at a "
        "random time.",
    ]
    if parity:
        lines += [
            "",
            "## DDP parity: 2 CPU processes (gloo, SyncBatchNorm, batch 2 each) vs 1 process (batch 4)",
            "",
            "| quantity | max abs difference |",
            "|---|---|",
        ]
        for key in ("train/loss", "train/main_loss", "train/aux_loss", "weights and buffers", "val/mIoU"):
            lines.append(f"| {key} | {parity[key]:.2e} |")
        lines.append(f"| val/pixel_acc | {parity['val/pixel_acc']:.2e} |")
        lines += [
            "",
            f"(first-step loss {parity['first-step loss']:.4f}; largest weight magnitude "
            f"{parity['largest weight magnitude']:.3f}.) Per-step losses over 4 steps, weights after 4 steps.",
        ]
    text = "\n".join(lines) + "\n"
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
