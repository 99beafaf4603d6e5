"""The tiny in-process fit of ``tests.helpers`` as a fixture for the callback tests."""

import pytest

from tests.helpers import tiny_fit


@pytest.fixture
def fit(tmp_path):
    return lambda **kwargs: tiny_fit(tmp_path, **kwargs)
