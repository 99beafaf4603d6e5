"""CheckpointOnSigterm saves ``last.ckpt`` on Lightning's SIGTERMException during a fit that trained, and on nothing
else; Ctrl-C (SIGINT) takes the same path."""

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dnlseg.callbacks import CheckpointOnSigterm
from dnlseg.callbacks.sigterm_checkpoint import exit_status, last_checkpoint_path


def trainer_with(checkpoints, fn=TrainerFn.FITTING):
    saved = []

    def save_checkpoint(path, weights_only=None):
        # Lightning logs "`weights_only` was not set, defaulting to `False`" when it is None: say it.
        assert weights_only is False, "the SIGTERM save must say weights_only=False"
        saved.append(path)

    trainer = SimpleNamespace(
        checkpoint_callbacks=checkpoints,
        state=SimpleNamespace(fn=fn),
        global_step=12,
        save_checkpoint=save_checkpoint,
        _signal_connector=SimpleNamespace(received_sigterm=False),
    )
    return trainer, saved


def started(callback=None, step=10):
    """``callback`` (a new CheckpointOnSigterm) after its fit's training started at ``step``."""
    callback = callback or CheckpointOnSigterm()
    callback.on_train_start(SimpleNamespace(global_step=step), None)
    return callback


def test_last_checkpoint_is_in_the_dir_of_the_callback_that_keeps_last(tmp_path):
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val/mIoU")
    last = ModelCheckpoint(dirpath=tmp_path / "last", save_last=True)
    assert last_checkpoint_path(trainer_with([best, last])[0]) == tmp_path / "last" / "last.ckpt"
    assert last_checkpoint_path(trainer_with([best])[0]) == tmp_path / "best" / "last.ckpt"  # else the first
    assert last_checkpoint_path(trainer_with([ModelCheckpoint()])[0]) is None  # no directory yet
    assert last_checkpoint_path(trainer_with([])[0]) is None


def test_sigterm_during_a_fit_saves_last_ckpt(tmp_path, caplog):
    trainer, saved = trainer_with([ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    with caplog.at_level("INFO"):
        started().on_exception(trainer, None, SIGTERMException())
    assert saved == [Path(tmp_path) / "last.ckpt"]
    assert "SIGTERM at step 12: saved" in caplog.text and "--ckpt_path last" in caplog.text


@pytest.mark.parametrize(
    "exception, fn",
    [(RuntimeError("out of memory"), TrainerFn.FITTING), (SIGTERMException(), TrainerFn.VALIDATING)],
)
def test_other_exceptions_and_other_stages_save_nothing(tmp_path, exception, fn):
    trainer, saved = trainer_with([ModelCheckpoint(dirpath=tmp_path, save_last=True)], fn)
    started().on_exception(trainer, None, exception)
    assert saved == []


def test_without_a_checkpoint_directory_it_warns_and_saves_nothing(caplog):
    trainer, saved = trainer_with([])
    started().on_exception(trainer, None, SIGTERMException())
    assert (
        saved == [] and caplog.records[-1].getMessage() == "SIGTERM: no ModelCheckpoint with a directory; nothing saved"
    )


def test_the_sigterm_file_is_recorded_as_the_callbacks_last_checkpoint_before_it_is_written(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    recorded = []
    trainer = SimpleNamespace(
        checkpoint_callbacks=[callback],
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        global_step=3,
        save_checkpoint=lambda path, weights_only=None: recorded.append(
            callback.last_model_path
        ),  # the state the file will hold
    )
    started().on_exception(trainer, None, SIGTERMException())
    assert recorded == [str(tmp_path / "last.ckpt")] and callback.last_model_path == str(tmp_path / "last.ckpt")


def test_a_signal_before_the_first_training_step_saves_nothing(tmp_path, caplog):
    trainer, saved = trainer_with([ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    with caplog.at_level("INFO"):
        CheckpointOnSigterm().on_exception(trainer, None, SIGTERMException())  # training never started
        started(step=12).on_exception(trainer, None, SIGTERMException())  # started at 12, stopped at 12
    assert saved == []
    assert "SIGTERM before the first training step of this fit: nothing trained, nothing saved" in caplog.text


def test_ctrl_c_asks_the_fit_to_stop_like_sigterm_and_a_second_one_stops_it_at_once(tmp_path, caplog):
    trainer, saved = trainer_with([ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    callback = CheckpointOnSigterm()
    before = signal.getsignal(signal.SIGINT)
    try:
        callback.setup(trainer, None, "fit")
        assert signal.getsignal(signal.SIGINT) == callback.on_sigint
        with caplog.at_level("INFO"):
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C: no KeyboardInterrupt, Lightning's stop flag set
        assert trainer._signal_connector.received_sigterm and "Ctrl-C: stopping after the current step" in caplog.text
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == before  # given back
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_stop_saves_last_ckpt_names_sigint_and_exits_130(tmp_path, caplog):
    trainer, saved = trainer_with([ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    callback = started()
    callback.sigint = True
    stop = SIGTERMException()
    with caplog.at_level("INFO"):
        callback.on_exception(trainer, None, stop)
    assert saved == [Path(tmp_path) / "last.ckpt"] and "SIGINT at step 12: saved" in caplog.text
    assert exit_status(stop) == 130
    assert exit_status(SIGTERMException()) == 143
    sigterm = SIGTERMException()
    started().on_exception(trainer, None, sigterm)
    assert exit_status(sigterm) == 143


def test_a_ctrl_c_before_training_started_stops_the_fit_when_it_starts():
    callback = CheckpointOnSigterm()
    callback.sigint = True  # while the model was restored, before Lightning reset its flag
    with pytest.raises(SIGTERMException):
        callback.on_train_start(SimpleNamespace(global_step=0), None)
