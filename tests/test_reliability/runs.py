"""Run the ``dnlseg`` command in a subprocess as a user would, on tiny configs derived from the shipped one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from tests.recipes import ROOT, recipe, resolved

SHIPPED = recipe("synthetic/dnl")


def tiny_config(
    directory: Path,
    max_steps: int = 8,
    every_n_train_steps: int = 2,
    val_check_interval: int = 4,
    num_train: int = 12,
    batch_size: int = 2,
    name: str = "config.yaml",
    **model: dict,
) -> Path:
    """The shipped synthetic DNL config, shrunk: 32 px images, 8-channel head, runs under ``directory``; ``model``:
    changes of the model's option groups (``loss={"on_nonfinite": "skip"}``).

    12 images in batches of 2: an epoch is 6 steps, so 8 steps cross an epoch boundary.
    """
    config = resolved(SHIPPED)  # the whole config, its shared part merged in
    trainer = config["trainer"]
    trainer.update(
        max_steps=max_steps,
        val_check_interval=val_check_interval,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer["logger"]["init_args"]["save_dir"] = str(directory / "runs")
    last, best = trainer["callbacks"][0], trainer["callbacks"][1]
    assert last["init_args"]["save_last"] and best["init_args"]["monitor"] == "val/mIoU"
    last["init_args"]["every_n_train_steps"] = every_n_train_steps
    # The probe (an extra forward/backward) costs time here; its bitwise neutrality is tested elsewhere.
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("SeparationProbe")]
    # 0.1 s after each step: a signal sent once a checkpoint appears lands mid-run even on a fast machine.
    trainer["callbacks"].append({"class_path": "tests.test_reliability.faults.SlowSteps"})
    config["model"]["network"].update(head_channels=8, aux_channels=8)
    for group, options in model.items():  # e.g. loss={"on_nonfinite": "skip"}
        config["model"][group].update(options)
    config["data"]["init_args"].update(num_train=num_train, num_val=4, image_size=32)
    config["data"]["init_args"]["loader"]["batch_size"] = batch_size
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# What a DDP launch sets in its process: a child that inherits LOCAL_RANK thinks its workers are started for it.
DDP_LAUNCH_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def env(show_warnings: bool = False) -> dict[str, str]:
    """This process's environment (PYTHONPATH, plus the repository root for ``tests.*``), one thread, no warnings
    (``show_warnings``: warnings as a user sees them)."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    inherited = {name: value for name, value in os.environ.items() if name not in DDP_LAUNCH_VARIABLES}
    environment = {**inherited, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if show_warnings:
        del environment["PYTHONWARNINGS"]
    return environment


def dnlseg(*args: str, timeout: float = 300, show_warnings: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m dnlseg ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "dnlseg", *args], capture_output=True, text=True, timeout=timeout,
        env=env(show_warnings), cwd=ROOT,
    )  # fmt: skip


def run_dir(directory: Path) -> Path:
    return directory / "runs" / "dnl" / "version_0"


def last_ckpt(directory: Path) -> Path:
    return run_dir(directory) / "checkpoints" / "last.ckpt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def saved_step(path: Path) -> int | None:
    """``global_step`` in the checkpoint at ``path``; None when there is none or it cannot be read."""
    try:
        return load(path)["global_step"]
    except Exception:
        return None


def interrupt_at(args: list[str], directory: Path, step: int, sig: int, timeout: float = 300) -> tuple[int, str]:
    """Start a fit, send ``sig`` once ``last.ckpt`` holds ``step`` or more, return (exit status, output)."""

    def saved_enough() -> bool:
        found = saved_step(last_ckpt(directory)) if last_ckpt(directory).exists() else None
        return found is not None and found >= step

    return signal_when(args, saved_enough, sig, timeout)


def signal_when(args: list[str], ready: Callable[[], bool], sig: int, timeout: float = 300) -> tuple[int, str]:
    """Start ``dnlseg ARGS``, send ``sig`` once ``ready()`` is true, return (exit status, output)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dnlseg", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env(), cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                process.send_signal(sig)
                break
            time.sleep(0.01)
        output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output


def training_state(path: Path) -> dict[str, object]:
    """What must match between an interrupted-and-resumed run and an uninterrupted one."""
    ckpt = load(path)
    loops = ckpt["loops"]["fit_loop"]
    return {
        "global_step": ckpt["global_step"],
        "epoch": ckpt["epoch"],
        "state_dict": ckpt["state_dict"],
        "optimizer": ckpt["optimizer_states"],
        "lr_schedulers": ckpt["lr_schedulers"],
        "batches_that_stepped": loops["epoch_loop.state_dict"]["_batches_that_stepped"],
    }


def run_files(run_dir: Path) -> dict[str, str]:
    """{path below ``run_dir``: sha256} of the run's own files (its config, checkpoints, events), not ``eval/``."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.relative_to(run_dir).parts[0] != "eval"
    }


def error_line(result: subprocess.CompletedProcess) -> str:
    """The last line of stderr: where ``dnlseg: <message>`` stands (multi-line messages: their first line)."""
    lines = result.stderr.strip().splitlines()
    return next((line for line in lines if line.startswith("dnlseg: ")), lines[-1] if lines else "")


def printed_checkpoints(output: str) -> dict[str, str]:
    """{"last": path, "best": path} from the summary a fit prints at its end (``FitSummary``), without the steps."""
    found = {}
    for line in output.splitlines():
        for kind in ("last", "best"):
            if line.strip().startswith(f"{kind}: "):
                found[kind] = line.strip().split(": ", 1)[1].split(" (step ")[0]
    return found
