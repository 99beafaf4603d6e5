"""FitSummary: the final val/mIoU, the log directory and the checkpoints, in one INFO message."""

from types import SimpleNamespace

import torch

from dnlseg.callbacks import FitSummary


def summary(caplog, **trainer):
    """The summary of a fit that trained (``on_train_start`` ran)."""
    callback = FitSummary()
    with caplog.at_level("INFO"):
        callback.on_fit_start(None, None)
        callback.on_train_start(None, None)
        callback.on_fit_end(SimpleNamespace(**trainer), None)
    return caplog.records[-1].getMessage().splitlines()


def test_summary_names_the_miou_the_logs_and_the_last_and_best_checkpoints(caplog, tmp_path):
    for name in ("last.ckpt", "best.ckpt"):
        (tmp_path / name).write_bytes(b"")
    last = SimpleNamespace(dirpath=str(tmp_path), last_model_path=str(tmp_path / "last.ckpt"), best_model_path="")
    best = SimpleNamespace(dirpath=str(tmp_path), last_model_path="", best_model_path=str(tmp_path / "best.ckpt"))
    lines = summary(
        caplog,
        callback_metrics={"val/mIoU": torch.tensor(0.81234)},
        log_dir="/runs/v0",
        checkpoint_callbacks=[last, best],
    )
    assert lines == [
        "final val/mIoU: 0.8123",
        "logs: /runs/v0",
        f"checkpoints: {tmp_path}",
        f"  last: {tmp_path / 'last.ckpt'}",
        f"  best: {tmp_path / 'best.ckpt'}",
    ]
    (tmp_path / "best.ckpt").unlink()  # a recorded path whose file is gone is not printed
    lines = summary(caplog, callback_metrics={}, log_dir="/runs/v0", checkpoint_callbacks=[last, best])
    assert lines[-1] == "  best: -"


def test_summary_without_validation_or_checkpoints(caplog):
    lines = summary(caplog, callback_metrics={}, log_dir="/runs/v1", checkpoint_callbacks=[])
    assert lines == ["final val/mIoU: not computed", "logs: /runs/v1"]
    cb = SimpleNamespace(dirpath="/c", last_model_path="", best_model_path="")
    lines = summary(caplog, callback_metrics={}, log_dir="/runs/v1", checkpoint_callbacks=[cb])
    assert lines[2:] == ["checkpoints: /c", "  last: -", "  best: -"]


def test_checkpoint_callbacks_without_paths_show_dashes(caplog):
    lines = summary(caplog, callback_metrics={}, log_dir="/runs/v2", checkpoint_callbacks=[object()])
    assert lines[2:] == ["checkpoints: -", "  last: -", "  best: -"]


def test_a_resumed_run_that_was_already_complete_says_so_with_its_best_score(caplog, tmp_path):
    (tmp_path / "best.ckpt").write_bytes(b"")
    best = SimpleNamespace(
        dirpath=str(tmp_path),
        last_model_path="",
        best_model_path=str(tmp_path / "best.ckpt"),
        best_model_score=torch.tensor(0.56789),
        monitor="val/mIoU",
    )
    trainer = SimpleNamespace(
        callback_metrics={"val/mIoU": torch.tensor(0.1)},  # restored, not computed by this fit
        log_dir="/runs/v3",
        checkpoint_callbacks=[best],
        global_step=40,
        max_steps=40,
    )
    callback = FitSummary()
    callback.trained = True  # left over from an earlier fit with this callback
    with caplog.at_level("INFO"):
        callback.on_fit_start(None, None)  # on_train_start is not called: nothing to train
        callback.on_fit_end(trainer, None)
    assert caplog.records[-1].getMessage().splitlines() == [
        "the run was already complete at step 40 (max_steps=40): nothing trained",
        "best val/mIoU: 0.5679",
        "logs: /runs/v3",
        f"checkpoints: {tmp_path}",
        "  last: -",
        f"  best: {tmp_path / 'best.ckpt'}",
    ]
    best.best_model_score = None  # no score recorded: no best line
    with caplog.at_level("INFO"):
        callback.on_fit_end(trainer, None)
    assert caplog.records[-1].getMessage().splitlines()[:2] == [
        "the run was already complete at step 40 (max_steps=40): nothing trained",
        "logs: /runs/v3",
    ]
    assert FitSummary().trained is False


def test_a_complete_run_without_checkpoint_callbacks_gives_no_best_line(caplog):
    trainer = SimpleNamespace(
        callback_metrics={}, log_dir="/runs/v4", checkpoint_callbacks=[], global_step=5, max_steps=5
    )
    callback = FitSummary()
    with caplog.at_level("INFO"):
        callback.on_fit_start(None, None)
        callback.on_fit_end(trainer, None)
    assert caplog.records[-1].getMessage().splitlines() == [
        "the run was already complete at step 5 (max_steps=5): nothing trained",
        "logs: /runs/v4",
    ]


def test_the_final_score_and_the_last_file_name_their_steps(caplog, tmp_path):
    """The score of the validation at step 7 and last.ckpt of step 7 (a sanity check does not count)."""
    torch.save({"global_step": 7}, tmp_path / "last.ckpt")
    last = SimpleNamespace(dirpath=str(tmp_path), last_model_path=str(tmp_path / "last.ckpt"), best_model_path="")
    callback = FitSummary()
    with caplog.at_level("INFO"):
        callback.on_fit_start(None, None)
        callback.on_train_start(None, None)
        callback.on_validation_end(SimpleNamespace(sanity_checking=False, global_step=7), None)
        callback.on_validation_end(SimpleNamespace(sanity_checking=True, global_step=9), None)
        trainer = dict(callback_metrics={"val/mIoU": torch.tensor(0.5)}, log_dir="/runs/v0")
        callback.on_fit_end(SimpleNamespace(**trainer, checkpoint_callbacks=[last]), None)
    lines = caplog.records[-1].getMessage().splitlines()
    assert lines[0] == "final val/mIoU: 0.5000 (step 7)"
    assert lines[3] == f"  last: {tmp_path / 'last.ckpt'} (step 7)"
