"""A tiny finished fit through the ``dnlseg`` command, shared by the tests that evaluate or break a run."""

import pytest

from tests.test_reliability.runs import dnlseg, run_dir, tiny_config


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(its directory, the run folder): 4 steps, last.ckpt every 2, validation every 2 (a best checkpoint)."""
    directory = tmp_path_factory.mktemp("finished_run")
    result = dnlseg("fit", "-c", str(tiny_config(directory, max_steps=4, every_n_train_steps=2, val_check_interval=2)))
    assert result.returncode == 0, result.stderr[-3000:]
    return directory, run_dir(directory)
