"""ResumableModelCheckpoint: the record restored from last.ckpt is rebuilt from the checkpoint files on disk."""

import pytest
import torch

from dnlseg.callbacks import ResumableModelCheckpoint


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
