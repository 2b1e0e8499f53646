"""Fixtures shared by several test modules."""
from __future__ import annotations

import pytest


@pytest.fixture()
def user_data(tmp_path, monkeypatch):
    """A private user data folder (where the widgets keep and look for "your" weights).

    Weights files loaded during the test are forgotten afterwards, and no job started by
    the test may still hold the machine.
    """
    from napari_focusdeep._napari import _busy, _weights

    data = tmp_path / "user-data"
    monkeypatch.setenv(_weights.ENV_DATA_DIR, str(data))
    yield data
    _weights._session_files.clear()
    assert not _busy.running(), "a test left a job holding the machine"
