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


@pytest.fixture()
def one_torch_thread():
    """PyTorch on one thread: the suite runs on 2 shared cores, where one thread is
    faster than two fighting (and never takes every core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
