"""The ablation's report machinery: curve summaries, the paired bootstrap interval and the facts lines it allows
(hand-computed cases), and the whole experiment in its quick mode; the other experiments on the shared runner."""

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def ablation(monkeypatch):
    """The ablation's modules, imported as its script imports them (``_runner`` from experiments/)."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.syspath_prepend(str(EXPERIMENTS / "ablation"))
    names = ("_runner", "metrics", "seed_stats", "reference_levels", "heads", "run")
    yield {name: importlib.import_module(name) for name in names}
    for name in names:
        sys.modules.pop(name, None)


def test_area_under_curve_is_the_trapezoid_mean_over_the_step_span(ablation):
    m = ablation["metrics"]
    # trapezoid over [0, 10, 20] of [0, 1, 1]: 5 + 10 = 15, over a span of 20
    assert m.area_under_curve(np.array([0, 10, 20]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert m.area_under_curve(np.array([5]), np.array([0.3])) == pytest.approx(0.3)


def test_steps_to_90_percent_is_the_first_step_at_90_percent_of_the_best(ablation):
    m = ablation["metrics"]
    steps, values = np.array([50, 100, 150, 200]), np.array([0.1, 0.5, 0.95, 1.0])
    assert m.steps_to_fraction(steps, values) == 150  # 0.95 >= 0.9 * 1.0; 0.5 is not
    assert m.steps_to_fraction(steps, np.array([0.1, 0.5, 0.89, 1.0])) == 200
    assert m.steps_to_fraction(steps, np.array([0.1, 0.9, 0.95, 1.0])) == 100  # exactly 90% counts as reached


def test_summary_reads_member_iou_and_the_logit_gradient_ratio_from_logged_scalars(ablation):
    m = ablation["metrics"]
    steps = np.array([10, 20])
    scalars = {
        "val/mIoU": (steps, np.array([0.4, 0.6])),
        "val/IoU/background": (steps, np.array([0.9, 0.9])),
        "val/IoU/red": (steps, np.array([0.2, 0.4])),
        "val/IoU/green": (steps, np.array([0.4, np.nan])),  # absent at step 20: left out of the mean
        "separation/decode_head.context/unary_logit_grad": (steps, np.array([2.0, 8.0])),
        "separation/decode_head.context/pairwise_logit_grad": (steps, np.array([1.0, 1.0])),
        "val/unary_boundary_consistency": (steps, np.array([1.1, 1.3])),
    }
    s = m.summary(scalars)
    assert s["final_member"] == pytest.approx(0.4) and s["auc_member"] == pytest.approx((0.3 + 0.4) / 2)
    assert s["final_miou"] == pytest.approx(0.6) and s["steps90_miou"] == 20
    assert s["ratio"] == pytest.approx(4.0)  # geometric mean of 2 and 8
    assert s["ratio_late"] == pytest.approx(8.0)  # the steps after 20 / 2: step 20 only
    assert s["unary_boundary"] == pytest.approx(1.3) and math.isnan(s["pairwise_category"])


def test_reference_levels_are_the_member_iou_of_guessing_among_all_classes_or_the_legends(ablation):
    from dnlseg.data.synthetic.scene import SyntheticSample

    levels = ablation["reference_levels"]
    # one row of 5 pixels: background, key of class 1, key of class 2, a member of class 1, a void pixel
    mask = np.array([[0, 1, 2, 1, 255]], dtype=np.uint8)
    sample = SyntheticSample(
        image=np.zeros((1, 5, 3), np.uint8),
        mask=mask,
        region=np.arange(5, dtype=np.int16)[None],
        group=np.array([[-1, 0, 1, 0, 0]], dtype=np.int16),
        texture=np.array([[-1, 0, 1, 0, 0]], dtype=np.int16),
        key=np.array([[False, True, True, False, False]]),
    )
    # legend: the member goes 1/2 to class 1, 1/2 to class 2. IoU_1 = 1.5 / (2 + 1.5 - 1.5), IoU_2 = 1 / (1 + 1.5 - 1);
    # classes 3 and 4 are in neither labels nor guesses: left out
    assert levels.reference_levels([sample])["legend"] == pytest.approx((0.75 + 1 / 1.5) / 2)
    # local: 1/4 to each of classes 1-4. IoU_1 = 1.25 / 2, IoU_2 = 1 / 1.25, IoU_3 = IoU_4 = 0
    assert levels.reference_levels([sample])["local"] == pytest.approx((0.625 + 0.8 + 0 + 0) / 4)
    with pytest.raises(ValueError, match="guess='oracle'"):
        levels.expected_confusion([sample], "oracle")


def test_paired_bootstrap_interval_of_two_seeds_spans_the_two_differences(ablation):
    st = ablation["seed_stats"]
    # d = (0, 1): resampled means are 0 (p 1/4), 0.5 (1/2), 1 (1/4): the 2.5 and 97.5 percentiles are 0 and 1
    diff = st.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 1.0})
    assert (diff.mean, diff.low, diff.high, diff.seeds) == (0.5, 0.0, 1.0, 2)
    assert not diff.excludes_zero  # the interval touches 0


def test_paired_bootstrap_pairs_by_seed_not_by_position(ablation):
    st = ablation["seed_stats"]
    # d = a_s - b_s = (0.1, 0.15, 0.2): every resampled mean lies in [0.1, 0.2], and P(all 0.1) = 1/27 > 2.5%
    a = {0: 0.5, 1: 0.6, 2: 0.7}
    b = {2: 0.5, 0: 0.4, 1: 0.45}
    diff = st.paired_difference(a, b)
    assert diff.mean == pytest.approx(0.15)
    assert diff.low == pytest.approx(0.1) and diff.high == pytest.approx(0.2)
    assert diff.excludes_zero
    # orders that disagree between the variants: d = (0.7, 0.05, 0.05) paired, (0.1, 0.25, 0.45) if sorted apart;
    # P(mean* = 0.05) = (2/3)^3 = 8/27 > 2.5%, P(mean* = 0.7) = 1/27 > 2.5%: the interval is [0.05, 0.7]
    crossed = st.paired_difference({0: 0.9, 1: 0.3, 2: 0.5}, {0: 0.2, 1: 0.25, 2: 0.45})
    assert crossed.low == pytest.approx(0.05) and crossed.high == pytest.approx(0.7)


def test_facts_state_an_ordering_only_when_the_interval_excludes_zero(ablation):
    st = ablation["seed_stats"]
    clear = st.paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.45, 2: 0.5})
    assert st.ordering("DNL", "NL", clear, "final mIoU").endswith("**DNL > NL**.")
    # d = (-0.1, 0.2, 0.3): the resampled mean -0.1 has probability 1/27 > 2.5%, so the interval reaches below 0
    mixed = st.paired_difference({0: 0.4, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert mixed.low == pytest.approx(-0.1) and mixed.high == pytest.approx(0.3)
    line = st.ordering("DNL", "NL", mixed, "final mIoU")
    assert "includes 0, no ordering" in line and ">" not in line and "<" not in line
    lower = st.paired_difference({0: 0.1, 1: 0.2}, {0: 0.3, 1: 0.5})
    assert st.ordering("DNL", "NL", lower, "AUC").endswith("**DNL < NL**.")
    one = st.paired_difference({0: 0.9}, {0: 0.1, 1: 0.2})
    assert one.seeds == 1 and "1 seed: no interval, no ordering stated" in st.ordering("DNL", "NL", one, "m")


def test_the_facts_of_a_setting_compare_dnl_with_nl_on_every_metric_and_list_other_clear_pairs(ablation):
    run, metrics = ablation["run"], ablation["metrics"]

    def runs(final_member):
        return {
            seed: {"summary": dict.fromkeys(metrics.SUMMARY, 0.5) | {"final_member": v}, "curves": {}}
            for seed, v in enumerate(final_member)
        }

    by_variant = {"nl": runs([0.3, 0.35, 0.4]), "dnl": runs([0.5, 0.6, 0.62]), "unary_nl": runs([0.31, 0.34, 0.41])}
    lines = run.facts(by_variant)
    dnl_nl = [line for line in lines if "DNL - NL" in line]
    assert len(dnl_nl) == len(metrics.SUMMARY)
    assert [line for line in dnl_nl if "final member-class IoU" in line][0].endswith("**DNL > NL**.")
    assert all("no ordering" in line for line in dnl_nl if "final member-class IoU" not in line)  # all equal
    others = [line for line in lines if "**" in line and "DNL - NL" not in line]
    assert len(others) == 1 and others[0].endswith("**DNL > unary NL**.")  # NL vs unary NL: interval spans 0
    assert "final member-class IoU" in others[0]


@pytest.mark.slow
def test_quick_ablation_trains_reads_and_reports_with_intervals(ablation, tmp_path):
    report = ablation["run"].main(["--quick", "--out", str(tmp_path)])
    text = report.read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    results = saved["results"]["pairwise"]
    assert set(results) == {"nl", "unary_nl", "dnl", "danet"} and all(len(v) == 2 for v in results.values())
    curve = results["dnl"]["0"]["curves"]["miou"]
    assert curve[0] == [11, 23, 24]  # validations after steps 12, 24 and the last, 25 (0-based steps as logged)
    assert "## Setting `pairwise`" in text and "DNL - NL" in text and "95% CI" in text
    assert "Load average (1, 5, 15 min) before" in text
    # the quick runs' own val images (32 px, 4 images): levels of those, not of the 64 px setting
    levels = saved["reference_levels"]["pairwise"]
    assert 0 < levels["local"] < levels["legend"] < 1
    assert f"legend, no match **{levels['legend']:.3f}**" in text
    assert (tmp_path / "curves_pairwise.png").stat().st_size > 10_000
    assert "## Reading" in text and "HUMAN READING" in text
    # DANet, a head of its own layout: trained through model.network.decode_head, one row per block, the probe's
    # numbers for both blocks, and CAM's consistencies replaced by the reason its block gives
    from dnlseg.context import ChannelAttention2d

    danet = results["danet"]["0"]["blocks"]
    assert list(danet) == ["decode_head.pam", "decode_head.cam"]  # the network's order
    assert all(math.isfinite(danet[b][k]) and danet[b][k] > 0 for b in danet for k in ("ratio", "cross"))
    assert math.isfinite(danet["decode_head.pam"]["unary_boundary"])
    assert math.isnan(danet["decode_head.cam"]["unary_boundary"])
    cam = saved["blocks"]["pairwise"]["danet"]["decode_head.cam"]
    assert cam["keys"].endswith("channels")
    assert cam["undefined"]["unary_boundary"] == ChannelAttention2d.undefined_analyses["boundary_consistency"]
    section = text[text.index("block by block (`pairwise`)") :]
    rows = [line for line in section.splitlines() if "`decode_head." in line and line.startswith("|")]
    assert rows[3].startswith("| DANet (PAM + CAM) | `decode_head.pam` | all 16 pixels |")
    assert rows[4].startswith("|  | `decode_head.cam` | 64 channels |") and "n/a [" in rows[4]
    assert f"] {ChannelAttention2d.undefined_analyses['boundary_consistency']}." in section
    dnl = [r for r in rows if r.startswith("| DNL |")][0]
    assert "**no**: exactly 0" in dnl  # the cross-sensitivity of DNL: the two gradients are separate
    assert "**yes**" in rows[0]  # NL's: coupled
    assert "final val mIoU: DANet (PAM + CAM) - NL" in section
    # one softmax of p + u: dL/du is the column sum of dL/dp, so the ratio is at most sqrt(queries per key)
    facts = saved["blocks"]["pairwise"]
    assert facts["nl"]["decode_head.context"]["column_sum"] and not facts["dnl"]["decode_head.context"]["column_sum"]
    assert facts["danet"]["decode_head.pam"]["queries_per_key"] == 16  # 32 px at stride 8: a 4 x 4 map
    assert facts["danet"]["decode_head.cam"]["queries_per_key"] == 64  # the 64 channels of the head
    for variant, block, n in (("nl", "decode_head.context", 16), ("danet", "decode_head.pam", 16)):
        assert all(0 < r["blocks"][block]["ratio"] <= n**0.5 for r in results[variant].values())
    assert " | 4.00 | " in rows[0] and " | 8.00 | " in rows[4] and "| - |" in dnl
    # dnlseg analyze on seed 0's last checkpoint: the attention figures of PAM, shown in the report
    figures = sorted(p.name for p in (tmp_path / "figures" / "pairwise" / "danet").glob("*.png"))
    assert figures == [f"step000025_pam_decode_head.pam_image{i}.png" for i in (0, 1)]
    assert f"![danet {figures[0]}](figures/pairwise/danet/{figures[0]})" in text


def test_runner_builds_fit_arguments_that_name_the_log_folder(ablation, tmp_path):
    runner = ablation["_runner"]
    args = runner.fit_args([Path("a.yaml"), Path("b.yaml")], tmp_path, "dnl", "seed3", "--x=1")
    assert args[:4] == ["-c", "a.yaml", "-c", "b.yaml"]
    assert f"--trainer.logger.init_args.save_dir={tmp_path}" in args and args[-1] == "--x=1"
    assert "--trainer.logger.init_args.version=seed3" in args
    assert runner.dnlseg_command("fit", "-c", "x")[1:] == ["-m", "dnlseg", "fit", "-c", "x"]


@pytest.mark.parametrize("setting", ["pairwise", "pairwise_random", "boundary"])
def test_each_ablation_setting_composes_with_the_base_recipe_into_the_data_it_documents(setting, tmp_path):
    from dnlseg.cli.lightning_cli import run_cli

    settings = EXPERIMENTS.parent / "configs" / "synthetic" / "ablation"
    cli = run_cli(
        ["-c", str(settings / "base.yaml"), "-c", str(settings / f"{setting}.yaml"),
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        run=False,
    )  # fmt: skip
    expected = {
        "pairwise": {"groups": 2, "texture_levels": True, "random_textures": False, "ink": "stripes"},
        "pairwise_random": {"groups": 2, "texture_levels": True, "random_textures": True, "ink": "stripes"},
        "boundary": {"groups": 1, "texture_levels": False, "ink": "outline", "boundary_void": False},
    }[setting]
    assert {k: cli.datamodule.hparams[k] for k in expected} == expected
    assert cli.datamodule.hparams["image_size"] == 64
    assert cli.trainer.max_steps == {"pairwise": 600, "pairwise_random": 600, "boundary": 300}[setting]


def test_wall_times_of_a_stopped_experiment_come_from_config_and_event_file_times(ablation, tmp_path):
    import os

    run = ablation["run"]
    opts = run.parse(["--out", str(tmp_path), "--variants", "nl", "dnl", "--settings", "pairwise", "--seeds", "1"])
    for variant, (start, end) in {"nl": (1000.0, 1100.0), "dnl": (1050.0, 1300.0)}.items():
        directory = run.log_dir(tmp_path, "pairwise", variant, 0)
        directory.mkdir(parents=True)
        (directory / "config.yaml").write_text("x")
        (directory / "events.out.tfevents.1").write_text("x")
        os.utime(directory / "config.yaml", (start, start))
        os.utime(directory / "events.out.tfevents.1", (end, end))
    walls = run.walls_from_files(opts)
    assert walls == {"pairwise/nl/seed0": 100.0, "pairwise/dnl/seed0": 250.0, "total": 300.0}


def test_a_head_of_its_own_layout_replaces_the_base_recipes_context_block(ablation):
    heads = ablation["heads"].HEADS
    danet = dict(a.split("=", 1) for a in heads["danet"].overrides())
    assert json.loads(danet["--model.network.context"]) is None  # the base recipe's DNL block would be refused
    assert json.loads(danet["--model.network.decode_head"]) == {
        "class_path": "dnlseg.models.heads.DAHead",
        "init_args": {"pam_reduction": 8},
    }
    ccnet = dict(a.split("=", 1) for a in heads["ccnet"].overrides())
    assert json.loads(ccnet["--model.network.context"])["class_path"] == "dnlseg.context.CrissCrossAttention2d"
    assert json.loads(ccnet["--model.network.decode_head"]) is None
    assert json.loads(dict(a.split("=", 1) for a in heads["baseline"].overrides())["--model.network.context"]) is None
    run = ablation["run"]
    cmd = run.fit_command(run.parse(["--variants", "isanet"]), "boundary", "isanet", 1)
    assert "--model.network.decode_head.init_args.group_size" not in " ".join(cmd)
    assert json.loads(cmd[cmd.index(next(a for a in cmd if "decode_head=" in a))].split("=", 1)[1])["init_args"] == {
        "reduction": 2,
        "group_size": [4, 4],
    }


@pytest.mark.parametrize("name", ["danet", "ccnet", "annnet", "isanet", "emanet", "ocrnet"])
def test_every_section_7_head_takes_its_recipes_arguments_unless_a_deviation_says_why(ablation, name):
    import yaml

    head = ablation["heads"].HEADS[name]
    recipe = yaml.safe_load((EXPERIMENTS.parent / "configs" / "synthetic" / f"{head.recipe}.yaml").read_text())
    key = "context" if head.block is not None else "decode_head"
    assert recipe.get(f"model.network.{'decode_head' if key == 'context' else 'context'}") is None
    entry = recipe[f"model.network.{key}"]
    assert entry["class_path"] == head.network_options()[key]["class_path"]
    differing = {k for k, v in entry.get("init_args", {}).items() if head.init_args.get(k) != v}
    assert differing == ({"group_size"} if name == "isanet" else set())
    assert bool(head.deviation) == bool(differing)


@pytest.mark.parametrize("name", ["danet", "ccnet", "annnet", "isanet", "emanet", "ocrnet"])
def test_every_section_7_head_builds_on_the_ablation_map_with_more_than_one_key_per_softmax(ablation, name, tmp_path):
    """On the base recipe (64 channels, 64 px, an 8 x 8 map) every block of the head runs, and each query's softmax
    has more than one key: a single key gets weight 1 whatever its logits, so no gradient and no ratio (ISA's
    mmseg tile of 8 x 8 would leave the long-range stage one key)."""
    import torch
    import yaml

    from dnlseg.cli.lightning_cli import resolve_config
    from dnlseg.context import capture_attention

    settings = EXPERIMENTS.parent / "configs" / "synthetic" / "ablation"
    head = ablation["heads"].HEADS[name]
    config = resolve_config(settings / "base.yaml", "-c", str(settings / "boundary.yaml"), *head.overrides())
    assert config["model"]["network"]["head_channels"] == 64 and config["data"]["init_args"]["image_size"] == 64
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    facts = ablation["heads"].describe_blocks(tmp_path / "config.yaml")
    assert facts  # the head has blocks
    from dnlseg.cli.export import build

    network = build(tmp_path / "config.yaml", []).model.network.eval()
    with torch.no_grad(), capture_attention(network, max_calls=1) as captured:
        network(torch.zeros(1, 3, 64, 64))
    for block, calls in captured.items():
        mask = calls[0].key_mask(None)
        keys = calls[0].key_size[0] * calls[0].key_size[1] if mask is None else int(mask[0].sum(-1).min())
        assert keys > 1, f"{block}: {keys} key per query"
    # each attends with one softmax of p_ij + u_j (dL/du = column sums of dL/dp), n queries sharing a key at most:
    # every pixel (or CAM's 64 channels) on the whole map; CC: a key's row and column, 8 + 8 - 1; ISA: the 2 x 2
    # long-range group of each 4 x 4 tile offset, then the 4 x 4 tile
    expected = {"danet": [64, 64], "ccnet": [15], "annnet": [64, 64], "isanet": [4, 16], "emanet": [64]}
    assert [f.queries_per_key for f in facts.values()] == expected.get(name, [64])
    assert all(f.column_sum for f in facts.values())


def test_block_summary_reads_each_blocks_ratio_cross_sensitivity_and_consistencies(ablation):
    m = ablation["metrics"]
    steps = np.array([10, 20, 30])
    scalars = {
        "separation/decode_head.pam/unary_logit_grad": (steps, np.array([2.0, 8.0, 4.0])),
        "separation/decode_head.pam/pairwise_logit_grad": (steps, np.array([1.0, 1.0, 1.0])),
        "separation/decode_head.pam/cross_sensitivity": (steps, np.array([0.1, 0.2, 0.6])),
        "separation/decode_head.cam/unary_logit_grad": (steps, np.array([1.0, 1.0, 1.0])),
        "separation/decode_head.cam/pairwise_logit_grad": (steps, np.array([4.0, 4.0, 4.0])),
        "val/unary_boundary_consistency/decode_head.pam": (steps, np.array([1.0, 1.5, 1.25])),
        "val/pairwise_category_consistency/decode_head.pam": (steps, np.array([0.9, 1.1, 1.3])),
    }
    blocks = m.block_summary(scalars, ["decode_head.pam", "decode_head.cam"])
    pam, cam = blocks["decode_head.pam"], blocks["decode_head.cam"]
    assert pam["ratio"] == pytest.approx(4.0) and pam["ratio_late"] == pytest.approx(np.sqrt(32))  # steps 20, 30
    assert pam["cross"] == pytest.approx(0.3) and pam["cross_late"] == pytest.approx(0.4)  # arithmetic means
    assert pam["unary_boundary"] == pytest.approx(1.25) and pam["pairwise_category"] == pytest.approx(1.3)
    assert cam["ratio"] == pytest.approx(0.25) and math.isnan(cam["cross"]) and math.isnan(cam["unary_boundary"])
    # the run's ratio: the first block in the network's order, not in name order ("cam" < "pam")
    assert m.summary(scalars, ["decode_head.pam", "decode_head.cam"])["ratio"] == pytest.approx(4.0)
    assert m.summary(scalars)["ratio"] == pytest.approx(0.25)


def test_heads_table_gives_the_reason_where_a_number_has_no_meaning_and_says_not_logged_otherwise(ablation):
    run, metrics = ablation["run"], ablation["metrics"]

    def runs(cross, boundary):
        blocks = {"decode_head.attention": dict.fromkeys(metrics.BLOCK_SUMMARY, float("nan"))}
        out = {}
        for seed, (c, b) in enumerate(zip(cross, boundary, strict=True)):
            numbers = blocks["decode_head.attention"] | {"cross": c, "unary_boundary": b}
            out[seed] = {"summary": dict.fromkeys(metrics.SUMMARY, 0.5), "blocks": {"decode_head.attention": numbers}}
        return out

    nan = float("nan")
    by_variant = {"emanet": runs([nan, nan], [nan, nan]), "ocrnet": runs([0.2, 0.4], [1.0, 1.2])}
    facts = {
        "emanet": {"decode_head.attention": {"keys": "64 bases", "undefined": {"cross": "no gradient"}}},
        "ocrnet": {
            "decode_head.attention": {
                "keys": "5 class regions",
                "undefined": {},
                "column_sum": True,
                "queries_per_key": 64,
            }
        },
    }
    lines = run.heads_section("boundary", by_variant, facts)
    ema = [line for line in lines if line.startswith("| EMANet |")][0]
    ocr = [line for line in lines if line.startswith("| OCR |")][0]
    cells = [c.strip() for c in ema.split("|")[1:-1]]
    assert cells[3:5] == ["not logged", "not logged"]  # the ratio: no number and no reason
    assert cells[5] == "-"  # no bound: the facts do not say its unary gradient is a column sum
    assert cells[6] == "n/a [1]" and "[1] no gradient." in [line.strip() for line in lines]
    assert [c.strip() for c in ocr.split("|")[1:-1]][5] == "8.00"  # sqrt(64)
    assert "0.30 [0.20, 0.40]" not in ocr and "0.300 [0.200, 0.400]" in ocr  # mean [bootstrap interval], 3 digits
    assert "1.10 [1.00, 1.20]" in ocr and "**yes**" in ocr


def test_a_partial_rerun_keeps_the_other_runs_from_results_json_and_names_who_trained_them(ablation, tmp_path):
    run = ablation["run"]
    entry = {"summary": {"final_miou": 0.5}, "curves": {"miou": [[0, 1], [0.1, 0.2]]}}
    saved = {
        "command": "make experiment-ablation",
        "date": "2026-12-01",
        "commit": "f9ecbc7",
        "load_average": {"before": "2.0", "after": "3.0"},
        "results": {"pairwise": {"nl": {"0": entry}}, "boundary": {"nl": {"0": entry}, "dnl": {"0": entry}}},
        "kept": {},
    }
    fresh_entry = {"summary": {"final_miou": 0.9}, "curves": {}, "blocks": {}}
    fresh = {"boundary": {"nl": {0: fresh_entry}, "danet": {0: fresh_entry}}}
    results, _, kept = run.merge(saved, tmp_path / "results.json", fresh, {}, report_only=False)
    assert list(results) == ["pairwise", "boundary"]
    assert list(results["boundary"]) == ["nl", "dnl", "danet"]  # the table's order
    assert results["boundary"]["nl"][0]["summary"]["final_miou"] == 0.9  # retrained: replaced
    assert results["boundary"]["dnl"][0]["summary"]["final_miou"] == 0.5  # kept, seeds back to integers
    np.testing.assert_array_equal(results["pairwise"]["nl"][0]["curves"]["miou"][1], [0.1, 0.2])
    assert set(kept) == {"pairwise/nl", "boundary/dnl"}
    assert kept["boundary/dnl"]["commit"] == "f9ecbc7" and kept["boundary/dnl"]["date"] == "2026-12-01"
    lines = "\n".join(run.kept_lines(kept))
    assert "`make experiment-ablation` (date 2026-12-01, commit f9ecbc7; load average before 2.0" in lines
    assert "pairwise/NL, boundary/DNL" in lines
    # re-read later (--report-only): what that file's own command trained is not "kept", what it kept still is
    saved_again = saved | {"kept": {"boundary/dnl": kept["boundary/dnl"]}, "command": "python run.py --variants nl"}
    _, _, kept_again = run.merge(saved_again, tmp_path / "results.json", {}, {}, report_only=True)
    assert set(kept_again) == {"boundary/dnl"}


def test_only_one_softmax_of_pairwise_plus_unary_makes_the_unary_gradient_a_column_sum(ablation, tmp_path):
    """NL: w = softmax(p + u), so dL/du_j = sum_i dL/dp_ij; DNL adds two softmaxes (no such identity); GC has no p."""
    import yaml

    from dnlseg.cli.lightning_cli import resolve_config

    settings = EXPERIMENTS.parent / "configs" / "synthetic" / "ablation"
    found = {}
    for name in ("nl", "dnl", "gc"):
        head = ablation["heads"].HEADS[name]
        config = resolve_config(settings / "base.yaml", "-c", str(settings / "boundary.yaml"), *head.overrides())
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        (facts,) = ablation["heads"].describe_blocks(tmp_path / f"{name}.yaml").values()
        found[name] = (facts.column_sum, facts.queries_per_key)
    assert found == {"nl": (True, 64), "dnl": (False, 64), "gc": (False, 64)}


def test_a_captured_output_off_the_losss_path_is_named_not_left_as_a_silent_gap(ablation):
    """SeparationProbe takes dL/dy at each captured output and skips a block where autograd gives None: the report
    must name that block (ANN's and OCR's blocks captured a transposed copy of y on main 1c03f22)."""
    from types import SimpleNamespace

    import torch

    x = torch.randn(2, 3, requires_grad=True)
    y = x * 2  # what the forward goes on with
    loss = (y.transpose(0, 1) ** 2).sum()  # through a view of y: y is on the path
    copy = y.transpose(0, 1)  # a view made for the capture after the loss was built: not on the path
    calls = {
        "on": SimpleNamespace(output=y),
        "off": SimpleNamespace(output=copy),
        "no_graph": SimpleNamespace(output=y.detach()),  # EMA: computed under no_grad
    }
    assert ablation["heads"].gradient_reaches(loss, calls) == {"on": True, "off": False, "no_graph": False}
