"""cli/renamed_keys.py: a run folder's config.yaml written before issue #22 (flat loader, check and model keys, here
two files written by main 02f9f7a in ``configs_before_22/`` and a whole run folder written by 08adeb9 in
``run_before_22/``) still reads, validates and fits, and says once what it renamed."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from dnlseg.cli import renamed_keys
from dnlseg.cli.lightning_cli import resolve_config
from dnlseg.cli.renamed_keys import rename_old_keys
from dnlseg.errors import RenamedKeyError
from tests.test_reliability.runs import dnlseg

BEFORE = Path(__file__).parents[1] / "data" / "configs_before_22"
RUN_BEFORE = (
    Path(__file__).parents[1] / "data" / "run_before_22"
)  # config.yaml, hparams.yaml, checkpoints/last.ckpt of a 2-step fit
# What each old file's data keys say, in the new places (read off the files by hand).
EXPECTED = {
    "synthetic": {"loader": {"batch_size": 2, "num_workers": 0, "pin_memory": False}},
    "cityscapes": {
        "loader": {"batch_size": 2, "val_batch_size": 1, "num_workers": 0, "pin_memory": True},
        "checks": {"label_values": True, "threads": 8},
    },
}


# What the old run folder's model keys say, in the new places (read off run_before_22/config.yaml by hand).
EXPECTED_MODEL = {
    "network": {
        "encoder": {"name": "tu-test_efficientnet", "weights": None, "depth": 5, "output_stride": 8},
        "head_channels": 16,
        "aux_channels": 8,
        "dropout": 0.2,
        "align_corners": True,
    },
    "loss": {
        "aux_weight": 0.3,
        "ohem_threshold": 0.7,
        "ohem_min_kept": 100,
        "normalization": "all",
        "on_nonfinite": "stop",
    },
    "optimization": {"param_groups": None, "poly_power": 1.0, "poly_eta_min": 0.0001},
    "runtime": {"channels_last": False, "compile": False},
}
UNCHANGED_MODEL = ("init_weights", "optimizer", "lr_scheduler", "inference")  # keys that kept their names


@pytest.fixture(autouse=True)
def nothing_reported_yet(monkeypatch):
    monkeypatch.setattr(renamed_keys, "_reported", set())


def old_config(name: str) -> dict:
    return yaml.safe_load((BEFORE / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", EXPECTED)
def test_the_old_flat_keys_move_to_their_groups_and_nothing_else_changes(name):
    old = old_config(name)
    new = rename_old_keys(old_config(name))
    for group, values in EXPECTED[name].items():
        assert new["data"]["init_args"][group] == values
    moved = renamed_keys.section_renames("data.init_args")
    for key in moved:
        assert key not in new["data"]["init_args"]
    unchanged = {k: v for k, v in old["data"]["init_args"].items() if k not in moved}
    assert {k: v for k, v in new["data"]["init_args"].items() if k not in EXPECTED[name]} == unchanged
    old_plugin, new_plugin = (
        "dnlseg.checkpoint_io.AtomicCheckpointIO",
        "dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO",
    )
    assert old["trainer"].pop("plugins") == [{"class_path": old_plugin}]
    assert new["trainer"].pop("plugins") == [{"class_path": new_plugin}]
    assert {k: v for k, v in new.items() if k not in ("data", "model")} == {
        k: v for k, v in old.items() if k not in ("data", "model")
    }
    assert new["model"]["network"]["context"] == old["model"]["context"]


@pytest.mark.parametrize("name", EXPECTED)
def test_the_dnlseg_parser_reads_an_old_config_file_as_its_new_form_and_says_so_once(name, tmp_path, caplog):
    config = {k: v for k, v in old_config(name).items() if k not in ("ckpt_path", "weights_only")}  # fit's own keys
    old, renamed = tmp_path / "old.yaml", tmp_path / "renamed.yaml"
    old.write_text(yaml.safe_dump(config, sort_keys=False))
    renamed.write_text(yaml.safe_dump(rename_old_keys(config), sort_keys=False))
    with caplog.at_level(logging.WARNING, logger="dnlseg.cli.renamed_keys"):
        whole = resolve_config(old)
        resolve_config(old)  # a second read in the same process: nothing more to say
    assert whole == resolve_config(renamed)
    for group, values in EXPECTED[name].items():
        assert values.items() <= whole["data"]["init_args"][group].items()
    assert whole["model"]["network"]["encoder"]["name"] == old_config(name)["model"]["encoder_name"]
    keys, class_paths = sorted(caplog.records, key=lambda record: "class paths" in record.getMessage())
    assert class_paths.getMessage().startswith(
        "config: class paths read under their new names (dnlseg issue #22): dnlseg.checkpoint_io.AtomicCheckpointIO -> "
    )
    message = keys.getMessage()
    assert message.startswith("config: keys read under their new names (dnlseg issue #22): ")
    old = old_config(name)
    olds = [f"data.init_args.{key}" for key in old["data"]["init_args"]] + [f"model.{key}" for key in old["model"]]
    assert {key for key in olds if key in renamed_keys.RENAMED} >= {"data.init_args.batch_size", "model.context"}
    for key in olds:
        assert (f"{key} -> " in message) == (key in renamed_keys.RENAMED)
        assert key not in renamed_keys.RENAMED or f"{key} -> {renamed_keys.RENAMED[key]}" in message


def test_old_class_paths_are_renamed_wherever_the_file_names_them_and_logged_once(caplog):
    config = {
        "trainer": {
            "plugins": [
                "dnlseg.sync_batchnorm.SyncBatchNormPlugin",
                {"class_path": "dnlseg.checkpoint_io.AtomicCheckpointIO"},
            ],
        },
        "other": {"norm_layer": {"class_path": "dnlseg.sync_batchnorm.SyncBatchNorm"}, "name": "dnlseg.checkpoint_io"},
    }
    with caplog.at_level(logging.WARNING, logger="dnlseg.cli.renamed_keys"):
        new = rename_old_keys(json.loads(json.dumps(config)))
        assert rename_old_keys(json.loads(json.dumps(config))) == new  # a second read: nothing more to say
    assert new == {
        "trainer": {
            "plugins": [
                "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin",
                {"class_path": "dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO"},
            ],
        },
        "other": {
            "norm_layer": {"class_path": "dnlseg.models.sync_batchnorm.SyncBatchNorm"},
            "name": "dnlseg.checkpoint_io",
        },
    }
    (record,) = caplog.records
    assert record.getMessage() == (
        "config: class paths read under their new names (dnlseg issue #22): "
        "dnlseg.checkpoint_io.AtomicCheckpointIO -> dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO, "
        "dnlseg.sync_batchnorm.SyncBatchNorm -> dnlseg.models.sync_batchnorm.SyncBatchNorm, "
        "dnlseg.sync_batchnorm.SyncBatchNormPlugin -> dnlseg.models.sync_batchnorm.SyncBatchNormPlugin; "
        "write the new names to silence this"
    )


def test_every_renamed_class_path_names_a_class():
    import importlib

    for new in renamed_keys.RENAMED_CLASS_PATHS.values():
        module, _, name = new.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), new


def test_an_old_key_beside_its_new_name_is_refused_naming_both():
    config = {"data": {"class_path": "dnlseg.data.VOCDataModule", "init_args": {"batch_size": 2, "loader": {}}}}
    assert rename_old_keys(config)["data"]["init_args"] == {"loader": {"batch_size": 2}}
    config["data"]["init_args"]["batch_size"] = 4
    with pytest.raises(
        RenamedKeyError, match=r"gives both batch_size .* and loader.batch_size: keep loader.batch_size"
    ):
        rename_old_keys(config)
    with pytest.raises(RenamedKeyError, match=r"^model gives both head_channels .* and network.head_channels: keep"):
        rename_old_keys({"model": {"head_channels": 8, "network": {"head_channels": 16}}})
    with pytest.raises(RenamedKeyError, match=r"gives both model.context .* and model.network.context: keep model\.ne"):
        rename_old_keys({"model.context": None, "model.network.context": None})


def test_the_old_flat_model_keys_of_a_run_folder_move_to_their_groups():
    old = yaml.safe_load((RUN_BEFORE / "config.yaml").read_text())["model"]
    assert old.keys() >= renamed_keys.section_renames("model").keys()  # the folder holds every old model key
    new = rename_old_keys({"model": dict(old)})["model"]
    context = new["network"].pop("context")
    assert context == old["context"] and context["class_path"] == "dnlseg.context.DisentangledNonLocal2d"
    assert new == EXPECTED_MODEL | {key: old[key] for key in UNCHANGED_MODEL}


def test_a_recipes_dotted_old_model_entries_are_renamed_in_place_keeping_their_order():
    recipe = {
        "config": "_128px_800steps.yaml",
        "model.encoder_name": "resnet50",
        "model.context": {"class_path": "dnlseg.context.NonLocal2d"},
        "model.context.init_args.reduction": 4,
        "model.contexts": 1,  # not an old key: left alone
        "model.inference": None,
    }
    assert list(rename_old_keys(dict(recipe)).items()) == [
        ("config", "_128px_800steps.yaml"),
        ("model.network.encoder.name", "resnet50"),
        ("model.network.context", {"class_path": "dnlseg.context.NonLocal2d"}),
        ("model.network.context.init_args.reduction", 4),
        ("model.contexts", 1),
        ("model.inference", None),
    ]


@pytest.mark.parametrize(
    "config",
    [
        {"data": {"class_path": "my_package.MyDataModule", "init_args": {"batch_size": 2}}},  # not dnlseg's
        {"model": {"batch_size": 2, "network": {"context": None}}},  # new names only
        {"context": None, "head_channels": 8},  # a value, e.g. of --model.network: not a model section
        "a value from the command line",
    ],
    ids=["own-datamodule", "new-model-keys", "no-model-section", "not-a-mapping"],
)
def test_what_is_not_a_dnlseg_datamodules_section_is_left_alone(config):
    assert rename_old_keys(json.loads(json.dumps(config))) == config


@pytest.mark.slow
def test_an_old_run_folder_validates_with_ckpt_path_last(tmp_path):
    """A run folder as main wrote it: its config.yaml (flat keys) and a checkpoint; ``validate --ckpt_path last``."""
    config = old_config("synthetic")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config, sort_keys=False))
    fit = dnlseg("fit", "-c", str(old), "--trainer.max_steps=1")  # a fit from the old file reads it too
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "runs" / "dnl" / "version_0"
    (run / "config.yaml").write_text(old.read_text())  # the run folder's config as main wrote it
    result = dnlseg("validate", "-c", str(run / "config.yaml"), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("keys read under their new names") == 1
    assert "data.init_args.batch_size -> data.init_args.loader.batch_size" in result.stderr
    assert "model.head_channels -> model.network.head_channels" in result.stderr
    (metrics,) = run.glob("eval/last/validate-*/metrics.json")
    assert "val/mIoU" in json.loads(metrics.read_text())["metrics"]
    saved = yaml.safe_load((metrics.parent / "config.yaml").read_text())["data"]["init_args"]
    assert saved["loader"] == {"batch_size": 2, "val_batch_size": None, "num_workers": 0, "pin_memory": False}


@pytest.mark.slow
def test_a_run_folder_written_before_the_model_options_were_grouped_validates_to_its_old_metrics(tmp_path):
    """``run_before_22/``: config.yaml (every model key flat), hparams.yaml and checkpoints/last.ckpt of a 2-step fit
    made by 08adeb9, before the model's options were grouped; ``validate --ckpt_path last`` gives the metrics that
    version's validate wrote (``validate_metrics.json``). Non-default align_corners, loss normalisation, OHEM and
    flip make the metrics depend on the old keys being read, and the checkpoint's state-dict keys on them not having
    changed."""
    run = tmp_path / "runs" / "dnl" / "version_0"
    shutil.copytree(RUN_BEFORE, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("save_dir: runs\n", f"save_dir: {tmp_path / 'runs'}\n"))
    result = dnlseg("validate", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.loss_normalization -> model.loss.normalization" in result.stderr
    (metrics,) = run.glob("eval/last/validate-*/metrics.json")
    written = json.loads(metrics.read_text())
    expected = json.loads((RUN_BEFORE / "validate_metrics.json").read_text())
    assert written["step"] == expected["step"] == 2
    assert written["metrics"].keys() == expected["metrics"].keys()
    for name, value in expected["metrics"].items():
        assert written["metrics"][name] == (value if value is None else pytest.approx(value, rel=1e-5, abs=1e-7))
