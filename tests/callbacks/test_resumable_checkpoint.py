"""ResumableModelCheckpoint: the record restored from last.ckpt is rebuilt from the checkpoint files on disk; every fit
that ends validates and saves last.ckpt at its final step."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.callbacks import ResumableModelCheckpoint
from tests.helpers import TinyRegression


def best_callback(folder):
    return ResumableModelCheckpoint(dirpath=str(folder), monitor="val/mIoU", mode="max", filename="step{step}")


def write_best(folder, name, score, callback):
    """A best-k file as ModelCheckpoint writes it: its own state lists it with its score."""
    path = folder / name
    state = {"best_k_models": {str(path): torch.tensor(score)}, "best_model_path": str(path)}
    torch.save({"callbacks": {callback.state_key: state}, "global_step": 1}, path)
    return path


def restored_state(best_path, score, last=""):
    return {
        "monitor": "val/mIoU",
        "best_model_score": torch.tensor(score),
        "best_model_path": str(best_path),
        "current_score": torch.tensor(score),
        "dirpath": None,
        "best_k_models": {str(best_path): torch.tensor(score)},
        "kth_best_model_path": str(best_path),
        "kth_value": torch.tensor(score),
        "last_model_path": last,
    }


def test_a_best_file_deleted_after_last_ckpt_was_saved_is_replaced_by_the_file_that_superseded_it(tmp_path):
    callback = best_callback(tmp_path)
    newer = write_best(tmp_path, "step8.ckpt", 0.7, callback)  # written after last.ckpt; it deleted step6.ckpt
    state = restored_state(tmp_path / "step6.ckpt", 0.5)
    state["dirpath"] = callback.dirpath
    callback.load_state_dict(state)
    assert callback.best_model_path == str(newer) and float(callback.best_model_score) == pytest.approx(0.7)
    assert list(callback.best_k_models) == [str(newer)] and callback.kth_best_model_path == str(newer)


def test_a_record_from_a_moved_folder_is_rebuilt_from_the_files_here(tmp_path):
    callback = best_callback(tmp_path)
    here = write_best(tmp_path, "step4.ckpt", 0.4, callback)
    callback.load_state_dict(restored_state("/elsewhere/step4.ckpt", 0.4) | {"dirpath": "/elsewhere"})
    assert callback.best_model_path == str(here) and float(callback.best_model_score) == pytest.approx(0.4)


def test_the_last_file_is_last_ckpt_when_the_record_has_none(tmp_path):
    callback = ResumableModelCheckpoint(dirpath=str(tmp_path), save_last=True, save_top_k=0, every_n_train_steps=2)
    (tmp_path / "last.ckpt").write_bytes(b"saved by CheckpointOnSigterm before the first periodic save")
    state = restored_state("", 0.0) | {"monitor": None, "dirpath": str(tmp_path), "best_k_models": {}}
    callback.load_state_dict(state)
    assert callback.last_model_path == str(tmp_path / "last.ckpt")  # the next save overwrites it: no last-v1.ckpt
    assert callback.best_model_path == ""


def test_files_of_another_callback_or_unreadable_files_are_left_out(tmp_path):
    callback = best_callback(tmp_path)
    other = ResumableModelCheckpoint(dirpath=str(tmp_path), monitor="val/loss", mode="min")
    write_best(tmp_path, "loss.ckpt", 0.1, other)
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    kept = write_best(tmp_path, "step2.ckpt", 0.3, callback)
    callback.load_state_dict(restored_state(kept, 0.3) | {"dirpath": callback.dirpath})
    assert list(callback.best_k_models) == [str(kept)]


def ranked_callback(folder, mode, top_k):
    callback = ResumableModelCheckpoint(
        dirpath=str(folder), monitor="val/mIoU", mode=mode, save_top_k=top_k, filename="step{step}"
    )
    for step, score in ((2, 0.3), (4, 0.7), (6, 0.5)):
        write_best(folder, f"step{step}.ckpt", score, callback)
    callback.load_state_dict(restored_state(folder / "step2.ckpt", 0.3) | {"dirpath": str(folder)})
    return callback


@pytest.mark.parametrize(
    "mode, top_k, kept", [("max", 2, [4, 6]), ("min", 2, [2, 6]), ("max", -1, [4, 6, 2]), ("min", 1, [2])]
)
def test_the_best_k_files_are_ranked_by_their_scores_in_the_callbacks_mode(tmp_path, mode, top_k, kept):
    callback = ranked_callback(tmp_path, mode, top_k)
    paths = [str(tmp_path / f"step{step}.ckpt") for step in kept]
    scores = {2: 0.3, 4: 0.7, 6: 0.5}
    assert list(callback.best_k_models) == paths
    assert [float(v) for v in callback.best_k_models.values()] == pytest.approx([scores[s] for s in kept])
    assert callback.best_model_path == paths[0] and float(callback.best_model_score) == pytest.approx(scores[kept[0]])
    if top_k == len(kept):  # the k-th best is the worst kept one
        assert callback.kth_best_model_path == paths[-1] and float(callback.kth_value) == pytest.approx(
            scores[kept[-1]]
        )
    else:  # fewer files than k (all kept): no k-th best yet, the worst possible score
        assert callback.kth_best_model_path == "" and float(callback.kth_value) == -float("inf")


def test_with_fewer_files_than_k_the_kth_value_is_the_worst_score_of_the_mode(tmp_path):
    for mode, worst in (("max", -float("inf")), ("min", float("inf"))):
        folder = tmp_path / mode
        folder.mkdir()
        callback = ResumableModelCheckpoint(dirpath=str(folder), monitor="val/mIoU", mode=mode, save_top_k=3)
        kept = write_best(folder, "a.ckpt", 0.4, callback)
        callback.load_state_dict(restored_state(kept, 0.4) | {"dirpath": str(folder)})
        assert callback.kth_best_model_path == "" and float(callback.kth_value) == worst
    empty = ResumableModelCheckpoint(dirpath=str(tmp_path / "none"), monitor="val/mIoU", mode="max")
    empty.load_state_dict(restored_state(tmp_path / "gone.ckpt", 0.4) | {"dirpath": str(tmp_path / "none")})
    assert empty.best_k_models == {} and empty.best_model_path == "" and empty.best_model_score is None


def test_last_files_and_hidden_files_are_not_best_k_files(tmp_path):
    callback = best_callback(tmp_path)
    for name in ("last.ckpt", "last-v1.ckpt", ".step9.ckpt"):
        write_best(tmp_path, name, 0.9, callback)  # each records a better score for itself
    kept = write_best(tmp_path, "step2.ckpt", 0.3, callback)
    callback.load_state_dict(restored_state(kept, 0.3) | {"dirpath": callback.dirpath})
    assert list(callback.best_k_models) == [str(kept)]


def test_a_score_the_record_holds_wins_over_the_score_the_file_holds(tmp_path):
    callback = best_callback(tmp_path)
    kept = write_best(tmp_path, "step2.ckpt", 0.3, callback)
    callback.load_state_dict(restored_state(kept, 0.8) | {"dirpath": callback.dirpath})
    assert float(callback.best_model_score) == pytest.approx(0.8)


def test_stale_entries_are_logged_when_dropped(tmp_path, caplog):
    callback = best_callback(tmp_path)
    kept = write_best(tmp_path, "step8.ckpt", 0.7, callback)
    with caplog.at_level("INFO", logger="dnlseg.callbacks.resumable_checkpoint"):
        callback.load_state_dict(restored_state(tmp_path / "step6.ckpt", 0.5) | {"dirpath": callback.dirpath})
    message = caplog.records[-1].getMessage()
    stale, now = [str(tmp_path / "step6.ckpt")], [str(kept)]
    assert message == f"checkpoint record: {stale} no longer on disk or not among the best; using {now}"


def test_without_a_monitor_or_with_top_k_zero_only_an_existing_best_path_is_kept(tmp_path):
    exists = tmp_path / "best.ckpt"
    exists.write_bytes(b"x")
    for monitor, top_k in ((None, 1), ("val/mIoU", 0)):
        for best, expected in ((exists, str(exists)), (tmp_path / "gone.ckpt", "")):
            callback = ResumableModelCheckpoint(dirpath=str(tmp_path), monitor=monitor, save_top_k=top_k)
            callback.load_state_dict(restored_state(best, 0.5) | {"monitor": monitor, "dirpath": str(tmp_path)})
            assert callback.best_model_path == expected
            assert list(callback.best_k_models) == [str(best)]  # the record is not rebuilt without ranking


def test_without_a_dirpath_or_save_last_the_record_is_restored_as_it_was(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"x")
    callback = ResumableModelCheckpoint(monitor="val/mIoU", save_last=True)  # no dirpath yet: nothing to look at
    callback.load_state_dict(restored_state(tmp_path / "gone.ckpt", 0.5) | {"dirpath": str(tmp_path)})
    assert callback.best_model_path == str(tmp_path / "gone.ckpt") and callback.last_model_path == ""
    no_last = ResumableModelCheckpoint(dirpath=str(tmp_path), save_top_k=0)
    no_last.load_state_dict(
        restored_state("", 0.0) | {"monitor": None, "dirpath": str(tmp_path), "last_model_path": "old"}
    )
    assert no_last.last_model_path == "old"  # save_last off: last.ckpt is not this callback's


def test_own_score_reads_the_score_a_file_recorded_for_itself_or_none(tmp_path):
    from dnlseg.callbacks.resumable_checkpoint import own_score

    callback = best_callback(tmp_path)
    assert float(own_score(write_best(tmp_path, "a.ckpt", 0.25, callback), callback.state_key)) == 0.25
    assert own_score(tmp_path / "a.ckpt", "another callback") is None
    torch.save([1, 2], tmp_path / "list.ckpt")  # not a dict
    assert own_score(tmp_path / "list.ckpt", callback.state_key) is None
    path = tmp_path / "float.ckpt"
    torch.save({"callbacks": {callback.state_key: {"best_k_models": {str(path): 0.5}}}}, path)  # not a tensor
    assert own_score(path, callback.state_key) is None
    other = tmp_path / "b.ckpt"
    torch.save(
        {"callbacks": {callback.state_key: {"best_k_models": {str(tmp_path / "c.ckpt"): torch.tensor(1.0)}}}}, other
    )
    assert own_score(other, callback.state_key) is None  # it records another file's score, not its own


def test_own_score_runs_no_code_from_a_file_and_reads_files_without_callbacks_as_none(tmp_path):
    import argparse

    from dnlseg.callbacks.resumable_checkpoint import own_score

    callback = best_callback(tmp_path)
    path = tmp_path / "objects.ckpt"
    state = {"best_k_models": {str(path): torch.tensor(0.5)}}
    torch.save({"callbacks": {callback.state_key: state}, "hparams": argparse.Namespace(lr=0.1)}, path)
    assert own_score(path, callback.state_key) is None  # weights_only refuses the pickled object: not loaded
    torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")  # a dict without callbacks
    assert own_score(tmp_path / "weights.ckpt", callback.state_key) is None


class RecordingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO that records ``(file name, global step)`` of every save."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, int]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.saved.append((Path(path).name, checkpoint["global_step"]))
        super().save_checkpoint(checkpoint, path, storage_options)


class StopAt(L.Callback):
    """Sets ``trainer.should_stop`` after training step ``step`` (as a time limit or a user's callback would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def lifecycle_fit(tmp_path, every_n_train_steps: int, callbacks=(), **trainer_kwargs):
    """A 4-batch-per-epoch fit with the shipped pair of checkpoint callbacks: last.ckpt every n steps, the best
    ``val/mIoU`` (= step / 1000: the latest validation is the best). Returns (the saves, the validated steps, the
    steps of the val/mIoU in the events, the last and best callbacks)."""
    last = ResumableModelCheckpoint(
        dirpath=tmp_path / "checkpoints", save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps
    )
    best = ResumableModelCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="val/mIoU", mode="max", filename="step{step}",
        auto_insert_metric_name=False,
    )  # fmt: skip
    io = RecordingCheckpointIO()
    model = TinyRegression(num_train=4)
    trainer = L.Trainer(
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        callbacks=[last, best, *callbacks],
        plugins=[io],
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(model)
    steps, values = read_scalars(tmp_path / "run" / "version_0")["val/mIoU"]
    logged = [round(v * 1000) for v in values]  # the step each logged val/mIoU was computed at
    assert len(logged) == len(steps)
    return io.saved, model.validated_at, logged, last, best


@pytest.mark.parametrize(
    ("max_steps", "every_n_train_steps", "val_check_interval", "last_saves", "validations"),
    [
        (7, 2, 4, [2, 4, 6, 7], [4, 7]),  # neither interval divides max_steps
        (8, 2, 4, [2, 4, 6, 8], [4, 8]),  # both do: nothing saved or validated twice
        (10, 4, 5, [4, 8, 10], [5, 10]),  # validation due at the end, the last save not
        (12, 4, 5, [4, 8, 12], [5, 10, 12]),  # the last save due at the end, the validation not
        (9, 20, 4, [9], [4, 8, 9]),  # no periodic save before the end
        (6, 3, 7, [3, 6], [6]),  # no validation before the end
    ],
)
def test_a_fit_that_reaches_max_steps_validates_and_saves_last_at_its_final_step_once(
    tmp_path, max_steps, every_n_train_steps, val_check_interval, last_saves, validations
):
    saved, validated, logged, last, best = lifecycle_fit(
        tmp_path, every_n_train_steps, max_steps=max_steps, val_check_interval=val_check_interval
    )
    assert [step for name, step in saved if name == "last.ckpt"] == last_saves
    assert validated == logged == validations
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == max_steps
    assert last.last_model_path == str(tmp_path / "checkpoints" / "last.ckpt")
    # the best callback saw the final validation (its score is the highest)
    assert Path(best.best_model_path).name == f"step{max_steps}.ckpt" and Path(best.best_model_path).is_file()


@pytest.mark.parametrize(
    ("ending", "last_saves", "validations"),
    [
        ({"max_epochs": 2}, [3, 6, 8], [3, 6, 8]),  # 2 epochs of 4 batches
        ({"max_steps": 20, "callbacks": [EarlyStopping("val/mIoU", mode="max", stopping_threshold=0.0)]}, [2, 3], [3]),
        ({"max_steps": 20, "callbacks": [StopAt(5)]}, [2, 4, 5], [3, 5]),  # a callback sets trainer.should_stop
    ],
    ids=["max_epochs", "early-stopping", "should_stop"],
)
def test_every_way_a_fit_ends_saves_last_at_its_final_step(tmp_path, ending, last_saves, validations):
    ending = dict(ending)
    callbacks = ending.pop("callbacks", [])
    every = 3 if "max_epochs" in ending else 2
    saved, validated, logged, _, _ = lifecycle_fit(tmp_path, every, callbacks=callbacks, val_check_interval=3, **ending)
    assert [step for name, step in saved if name == "last.ckpt"] == last_saves
    assert validated == logged == validations


def test_restoring_a_record_of_another_folder_says_nothing(tmp_path):
    import warnings

    run, evaluation = tmp_path / "checkpoints", tmp_path / "eval" / "last" / "validate-0" / "checkpoints"
    run.mkdir()
    best = write_best(run, "step4.ckpt", 0.4, best_callback(run))
    state = restored_state(best, 0.4) | {"dirpath": str(run)}
    with warnings.catch_warnings(record=True) as caught:  # validate/test/predict restore every callback's state
        warnings.simplefilter("always")
        callback = best_callback(evaluation)
        callback.load_state_dict(state)
    assert [str(w.message) for w in caught] == []
    assert callback.best_k_models == {}  # nothing of the run folder's record
