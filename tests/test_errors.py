"""Every error class for a user's mistake derives from ``dnlseg.errors.UserError`` (one-line reports in the CLI)."""

import pytest

from dnlseg.data import CorruptFileError, DatasetLayoutError
from dnlseg.errors import UserError
from dnlseg.models.nonfinite import NonFiniteLossError
from dnlseg.preflight import ConfigError
from dnlseg.weight_files import CheckpointMismatchError


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigError, ValueError),
        (CheckpointMismatchError, ValueError),
        (DatasetLayoutError, ValueError),
        (CorruptFileError, RuntimeError),
        (NonFiniteLossError, FloatingPointError),
    ],
)
def test_user_errors_share_the_base_class_and_keep_their_builtin(error, builtin):
    assert issubclass(error, UserError) and issubclass(error, builtin)
