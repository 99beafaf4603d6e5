"""cli/renamed_keys.py: a run folder's config.yaml written before issue #22 (flat loader and check keys, class paths
of moved modules; here two files written by main 02f9f7a in ``configs_before_22/``) still reads, validates and fits,
and says once what it renamed."""

import json
import logging
from pathlib import Path

import pytest
import yaml

from dnlseg.cli import renamed_keys
from dnlseg.cli.lightning_cli import resolve_config
from dnlseg.cli.renamed_keys import rename_old_keys
from dnlseg.errors import RenamedKeyError
from tests.test_reliability.runs import dnlseg

BEFORE = Path(__file__).parents[1] / "data" / "configs_before_22"
# What each old file's data keys say, in the new places (read off the files by hand).
EXPECTED = {
    "synthetic": {"loader": {"batch_size": 2, "num_workers": 0, "pin_memory": False}},
    "cityscapes": {
        "loader": {"batch_size": 2, "val_batch_size": 1, "num_workers": 0, "pin_memory": True},
        "checks": {"label_values": True, "threads": 8},
    },
}


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
    for key in renamed_keys.RENAMED:
        assert key not in new["data"]["init_args"]
    unchanged = {k: v for k, v in old["data"]["init_args"].items() if k not in renamed_keys.RENAMED}
    assert {k: v for k, v in new["data"]["init_args"].items() if k not in EXPECTED[name]} == unchanged
    old_plugin, new_plugin = (
        "dnlseg.checkpoint_io.AtomicCheckpointIO",
        "dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO",
    )
    assert old["trainer"].pop("plugins") == [{"class_path": old_plugin}]
    assert new["trainer"].pop("plugins") == [{"class_path": new_plugin}]
    assert {k: v for k, v in new.items() if k != "data"} == {k: v for k, v in old.items() if k != "data"}


def test_old_class_paths_are_renamed_wherever_the_file_names_them_and_logged_once(caplog):
    config = {
        "trainer": {
            "plugins": [
                "dnlseg.sync_batchnorm.SyncBatchNormPlugin",
                {"class_path": "dnlseg.checkpoint_io.AtomicCheckpointIO"},
            ],
        },
        "model": {"norm_layer": {"class_path": "dnlseg.sync_batchnorm.SyncBatchNorm"}, "name": "dnlseg.checkpoint_io"},
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
        "model": {
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
    keys, class_paths = sorted(caplog.records, key=lambda record: "class paths" in record.getMessage())
    assert class_paths.getMessage().startswith(
        "config: class paths read under their new names (dnlseg issue #22): dnlseg.checkpoint_io.AtomicCheckpointIO -> "
    )
    message = keys.getMessage()
    assert message.startswith("config: data.init_args keys read under their new names (dnlseg issue #22): ")
    for key in old_config(name)["data"]["init_args"].keys() & renamed_keys.RENAMED.keys():
        assert f"{key} -> {renamed_keys.RENAMED[key]}" in message


def test_an_old_key_beside_its_new_name_is_refused_naming_both():
    config = {"data": {"class_path": "dnlseg.data.VOCDataModule", "init_args": {"batch_size": 2, "loader": {}}}}
    assert rename_old_keys(config)["data"]["init_args"] == {"loader": {"batch_size": 2}}
    config["data"]["init_args"]["batch_size"] = 4
    with pytest.raises(
        RenamedKeyError, match=r"gives both batch_size .* and loader.batch_size: keep loader.batch_size"
    ):
        rename_old_keys(config)


@pytest.mark.parametrize(
    "config",
    [
        {"data": {"class_path": "my_package.MyDataModule", "init_args": {"batch_size": 2}}},  # not dnlseg's
        {"model": {"batch_size": 2}},
        "a value from the command line",
    ],
    ids=["own-datamodule", "no-data", "not-a-mapping"],
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
    assert result.stderr.count("data.init_args keys read under their new names") == 1
    assert "batch_size -> loader.batch_size, num_workers -> loader.num_workers" in result.stderr
    assert result.stderr.count("class paths read under their new names") == 1
    assert "dnlseg.checkpoint_io.AtomicCheckpointIO -> dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO" in (
        result.stderr
    )
    (metrics,) = run.glob("eval/last/validate-*/metrics.json")
    assert "val/mIoU" in json.loads(metrics.read_text())["metrics"]
    saved = yaml.safe_load((metrics.parent / "config.yaml").read_text())["data"]["init_args"]
    assert saved["loader"] == {"batch_size": 2, "val_batch_size": None, "num_workers": 0, "pin_memory": False}
    by_file = dnlseg("validate", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"))
    assert by_file.returncode == 0, by_file.stderr[-3000:]
    assert len(list(run.glob("eval/last/validate-*/metrics.json"))) == 2
