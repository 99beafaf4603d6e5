"""``dnlseg analyze``: consistency metrics and attention figures of a checkpoint, without training."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import Namespace

from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.callbacks import AttentionCaptureCallback, AttentionConsistency, AttentionMapLogger
from dnlseg.cli import run_dirs
from dnlseg.cli.analyze import analyze, config_analyses
from dnlseg.cli.lightning_cli import run_cli
from dnlseg.context import find_context_blocks
from dnlseg.errors import ConfigError
from tests.helpers import TINY, image_tags, warning_lines
from tests.recipes import RECIPES, recipe_id, resolved

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 2-step NL fit on 64 px synthetic images: (its saved config, last.ckpt)."""
    save_dir = tmp_path_factory.mktemp("runs")
    overrides = [arg for arg in TINY if not arg.startswith("--trainer.max_steps")]
    run_cli(
        [
            "fit",
            "-c",
            str(ROOT / "configs/synthetic/nl.yaml"),
            *overrides,
            "--trainer.max_steps=2",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={save_dir}",
        ]
    )
    (run_dir,) = save_dir.glob("nl/version_*")
    return run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_analyze_writes_metrics_and_figures_for_a_checkpoint(tiny_checkpoint, tmp_path):
    config, ckpt = tiny_checkpoint
    out = tmp_path / "analysis"
    cmd = [sys.executable, "-m", "dnlseg", "analyze", "-c", str(config), "--ckpt_path", str(ckpt)]
    cmd += ["--output", str(out), "--num_images", "2", "--limit_batches", "1", "--accelerator", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((out / "metrics.json").read_text())
    metrics = record["metrics"]
    assert {"val/mIoU", "val/pairwise_category_consistency", "val/unary_boundary_consistency"} <= metrics.keys()
    assert metrics["val/pairwise_category_consistency"] > 0 and metrics["val/unary_boundary_consistency"] > 0
    # labelled with the checkpoint's step
    assert sorted(record["figures"]) == [f"step000002_nl_decode_head.context_image{i}.png" for i in (0, 1)]
    assert all((out / name).stat().st_size > 0 for name in record["figures"])
    assert "val/pairwise_category_consistency" in (out / "metrics.md").read_text()
    assert "val/unary_boundary_consistency" in result.stderr  # logged summary


def test_analyze_reads_a_recipe_that_composes_its_family_file(tiny_checkpoint, tmp_path):
    """A recipe (not a run's config) names its shared file relative to itself; analyze must still find it."""
    _, ckpt = tiny_checkpoint
    recipe = ROOT / "configs/synthetic/nl.yaml"
    model = [arg for arg in TINY if arg.startswith(("--model.", "--data."))]
    args = ["-c", str(recipe), "--ckpt_path", str(ckpt), "--num_images", "1", "--limit_batches", "1", *model]
    metrics = analyze([*args, "--output_dir", str(tmp_path / "out")])
    assert "val/pairwise_category_consistency" in metrics and (tmp_path / "out" / "metrics.json").is_file()


def test_analyze_names_a_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(ConfigError, match="nope.ckpt: no such checkpoint file"):
        analyze(["-c", str(ROOT / "configs/synthetic/nl.yaml"), "--ckpt_path", str(missing)])


def test_default_output_is_a_new_folder_in_the_runs_eval_folder_of_the_checkpoint(tiny_checkpoint):
    config, ckpt = tiny_checkpoint
    args = ["-c", str(config), "--ckpt_path", str(ckpt), "--num_images", "1", "--limit_batches", "1"]
    metrics = analyze(args)
    out = Path(ckpt).parent.parent / "eval" / "last" / "analyze-0"  # <run>/eval/<checkpoint name>/analyze-<n>
    written = json.loads((out / "metrics.json").read_text())["metrics"]
    assert written.keys() == metrics.keys()
    assert written == pytest.approx({k: v if v == v else None for k, v in metrics.items()})  # NaN -> null
    analyze(args)
    assert (out.parent / "analyze-1" / "metrics.json").is_file()  # a second analysis does not overwrite the first


@pytest.mark.slow
def test_ckpt_path_last_analyzes_the_weights_validate_evaluates_into_the_runs_eval_folder_without_warnings(
    tiny_checkpoint, tmp_path
):
    """``--ckpt_path last`` is the run's last.ckpt in analyze as in validate (not the untrained model), the output
    goes to ``<run>/eval/last/analyze-<n>`` (not ``./eval`` of the working folder), and a default analyze prints
    no warning: a subprocess as a user runs it, from another folder, with Python's default warning filters."""
    config, ckpt = tiny_checkpoint
    expected = run_dirs.next_free(ckpt.parent.parent / "eval" / "last", "analyze")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dnlseg", "analyze", "-c", str(config), "--ckpt_path", "last"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (tmp_path / "eval").exists()
    analyzed = json.loads((expected / "metrics.json").read_text())
    assert analyzed["ckpt_path"] == str(ckpt) and analyzed["step"] == 2

    validate = run_cli(["validate", "-c", str(config), "--ckpt_path", "last", "--trainer.enable_progress_bar=false"])
    validated = validate.trainer.callback_metrics
    for key in ("val/mIoU", "val/loss", "val/pixel_acc"):  # the loss tells any other weights apart
        assert analyzed["metrics"][key] == pytest.approx(validated[key].item(), rel=1e-6), key

    assert warning_lines(result.stderr + result.stdout) == []
    assert "limit_val_batches" not in result.stderr  # Lightning's note on a limit analyze did not ask for
    assert result.stderr.count("GPU available") == 1


def callback_entries(*entries) -> list[Namespace]:
    """``trainer.callbacks`` as the parsed config holds them: (class path, {init args}) -> Namespaces."""
    return [Namespace(class_path=path, init_args=Namespace(**args)) for path, args in entries]


CALLBACKS = callback_entries(
    ("lightning.pytorch.callbacks.LearningRateMonitor", {"logging_interval": "step"}),
    ("dnlseg.callbacks.SeparationProbe", {"every_n_steps": 50}),  # measures training: not an analysis of checkpoints
    ("dnlseg.callbacks.AttentionConsistency", {"num_queries": 32, "radius": 2, "max_batches": 25, "seed": 0}),
    ("dnlseg.callbacks.AttentionMapLogger", {"num_images": 2, "scale": 0.5, "every_n_validations": 5}),
)
NO_OPTIONS = {"num_images": None, "num_queries": None, "radius": None, "scale": None}


def test_the_analyses_are_the_configs_with_its_arguments_measuring_every_batch_into_the_output_folder(tmp_path):
    consistency, figures = config_analyses(CALLBACKS, tmp_path, NO_OPTIONS, "c.yaml")
    assert type(consistency) is AttentionConsistency and type(figures) is AttentionMapLogger
    assert (consistency.num_queries, consistency.radius, consistency.max_batches) == (32, 2, None)
    assert (figures.num_images, figures.scale, figures.every_n_validations) == (2, 0.5, 1)
    assert figures.output_dir == tmp_path


def test_an_option_given_sets_the_argument_of_every_analysis_that_takes_it(tmp_path):
    options = {**NO_OPTIONS, "num_images": 3, "scale": 2.0, "num_queries": 5}
    consistency, figures = config_analyses(CALLBACKS, tmp_path, options, "c.yaml")
    assert (consistency.num_queries, consistency.radius, figures.num_images, figures.scale) == (5, 2, 3, 2.0)
    with pytest.raises(ConfigError, match=r"^--radius: no analysis of --config c.yaml \(AttentionMapLogger\) takes"):
        config_analyses(CALLBACKS[-1:], tmp_path, {**NO_OPTIONS, "radius": 1}, "c.yaml")


class CountBatches(AttentionCaptureCallback):
    """An analysis analyze has never heard of."""

    capture_validation = True

    def __init__(self, limit: int = 1) -> None:
        super().__init__()
        self.limit = limit

    @classmethod
    def analyze_arguments(cls, output_dir):
        return {}


def test_a_new_analysis_runs_once_the_config_lists_it_and_a_config_without_one_is_refused(tmp_path):
    (analysis,) = config_analyses(
        callback_entries((f"{__name__}.CountBatches", {"limit": 7})), tmp_path, NO_OPTIONS, "c.yaml"
    )
    assert type(analysis) is CountBatches and analysis.limit == 7
    with pytest.raises(ConfigError, match=r"^--config c.yaml: trainer.callbacks lists no analysis of checkpoints"):
        config_analyses(CALLBACKS[:2], tmp_path, NO_OPTIONS, "c.yaml")
    with pytest.raises(ConfigError, match="lists no analysis"):
        config_analyses(None, tmp_path, NO_OPTIONS, "c.yaml")


def has_block(recipe_file: Path) -> bool:
    """Whether a recipe's own lines set a context block or a decode head of its own (its YAML, not resolved)."""
    own = yaml.safe_load(recipe_file.read_text())
    return bool(own.get("model.network.decode_head") or own.get("model.network.context"))


# every synthetic recipe with context blocks: NL, DNL, GC and the heads of the field (DANet, CCNet, ANN, ISA, ...)
HEAD_RECIPES = [p for p in RECIPES if p.parent.name == "synthetic" and has_block(p)]
# where the number (figure) of each analysis of the family file's callbacks goes, per block
ANALYSIS_OUTPUT = {
    "logit_gradients": ("separation/{block}/pairwise_logit_grad", "separation/{block}/unary_logit_grad"),
    "cross_sensitivity": ("separation/{block}/cross_sensitivity",),
    "category_consistency": ("val/pairwise_category_consistency/{block}",),
    "boundary_consistency": ("val/unary_boundary_consistency/{block}",),
    "attention_maps": ("attention/{block}/image0",),
}
# 96 px: a 12 x 12 feature grid, which ISA pads to whole 8 x 8 groups (16 x 16: long-range groups of 4 members)
HEAD_FIT = [arg for arg in TINY if not arg.startswith(("--data.init_args.image_size", "--trainer.max_steps"))]
HEAD_FIT += ["--data.init_args.image_size=96", "--trainer.max_steps=2", "--data.init_args.num_val=2"]


def is_analysis(entry: dict) -> bool:
    module, _, name = entry["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return isinstance(cls, type) and issubclass(cls, AttentionCaptureCallback)


def tiny_fit_of(config: dict, save_dir: Path, name: str):
    """``dnlseg fit`` of ``config`` (a resolved recipe) shrunk by ``HEAD_FIT``: the CLI that ran it."""
    path = save_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    overrides = ["--trainer.num_sanity_val_steps=0", "--trainer.enable_model_summary=false"]
    overrides += [f"--trainer.logger.init_args.save_dir={save_dir}", f"--trainer.logger.init_args.name={name}"]
    return run_cli(["fit", "-c", str(path), *HEAD_FIT, *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("recipe_file", HEAD_RECIPES, ids=recipe_id)
def test_every_head_trains_unchanged_by_its_analyses_which_report_each_block_and_analysis(recipe_file, tmp_path):
    """The family file's callbacks on every head (the probe at every step): training bitwise as without the
    analyses (weights and buffers: BatchNorm statistics, EMA's bases), and for every block and analysis either a
    number (a figure) or the reason why not -- never both, never neither -- in the fit and in analyze's report."""
    config = resolved(recipe_file)
    callbacks = config["trainer"]["callbacks"]
    for entry in callbacks:
        if entry["class_path"].endswith(".SeparationProbe"):
            entry["init_args"]["every_n_steps"] = 1
    with_analyses = tiny_fit_of(config, tmp_path, "with")
    without = {**config, "trainer": {**config["trainer"], "callbacks": [e for e in callbacks if not is_analysis(e)]}}
    tiny_fit_of(without, tmp_path, "without")
    trained, plain = (torch.load(next(tmp_path.glob(f"{name}/version_0/checkpoints/last.ckpt")), weights_only=True)
                      for name in ("with", "without"))  # fmt: skip
    assert trained["global_step"] == plain["global_step"] == 2
    assert trained["state_dict"].keys() == plain["state_dict"].keys()
    for key, value in trained["state_dict"].items():
        assert torch.equal(value, plain["state_dict"][key]), key  # bitwise
    model = with_analyses.model
    blocks = find_context_blocks(model)
    untrained = run_cli(["-c", str(tmp_path / "with.yaml"), *HEAD_FIT], run=False).model.state_dict()  # seeded
    for name, block in blocks.items():  # the buffers training moves (EMA's bases, BatchNorm's statistics) moved
        for buffer, value in block.named_buffers():
            key = f"network.{name}.{buffer}"
            if value.is_floating_point() and key in untrained:  # the persistent ones
                assert not torch.equal(trained["state_dict"][key], untrained[key]), key

    run_dir = tmp_path / "with" / "version_0"
    scalars, images = read_scalars(run_dir), image_tags(run_dir)
    analyses = {type(c).__name__: c for c in with_analyses.trainer.callbacks if isinstance(c, AttentionCaptureCallback)}
    reasons = {key: r for c in analyses.values() for key, r in c.not_computed.items()}
    for name, block in blocks.items():
        assert any(tag.startswith(f"branch_grad/{name}/") for tag in scalars), name
        for analysis, tags in ANALYSIS_OUTPUT.items():
            tags = tuple(tag.format(block=name) for tag in tags)
            measured = any(tag in scalars or tag in images for tag in tags)
            reason = reasons.get((name, analysis))
            assert measured != (reason is not None), (name, analysis, reason)
            # a number is missing only where the block says why, its keys cannot have one, or it lacks the term
            declared = block.undefined_analyses.get(analysis)
            assert reason is None or reason == declared or reason.startswith(("its keys are", "it has no")), reason
            for tag in tags:  # norms and ratios are positive; DNL's cross-sensitivity is exactly 0
                if tag in scalars:
                    values = scalars[tag][1]
                    assert np.isfinite(values).all() and (values >= 0).all(), tag
                    assert analysis == "cross_sensitivity" or (values > 0).all(), tag

    out = tmp_path / "analysis"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    analyze(["-c", str(run_dir / "config.yaml"), "--ckpt_path", str(ckpt), "--output_dir", str(out)])
    record = json.loads((out / "metrics.json").read_text())
    rows = {(r["block"], r["analysis"]): r["reason"] for r in record["not_computed"]}
    report = (out / "metrics.md").read_text()
    for name, block in blocks.items():
        for analysis in ("category_consistency", "boundary_consistency", "attention_maps"):
            if analysis == "attention_maps":
                measured = any(f.endswith(f"_{name}_image0.png") for f in record["figures"])
            else:
                measured = ANALYSIS_OUTPUT[analysis][0].format(block=name) in record["metrics"]
            assert measured != ((name, analysis) in rows), (name, analysis)
        for analysis, reason in block.undefined_analyses.items():  # training-time ones too: no silent gap
            assert reason in rows[name, analysis] and f"| {name} | {analysis} | {rows[name, analysis]} |" in report
