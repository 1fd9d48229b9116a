"""Shared fixtures.  Real data lives in ../shared/data (never copied into the repository)."""

from __future__ import annotations

import pytest
from helpers import REPO, SHARED_DATA, make_blob_dataset, shared_file


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty model store (REPUX_HOME) so nothing leaks into ~/.repux."""
    home = tmp_path_factory.mktemp("repux_home")
    monkeypatch.setenv("REPUX_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained 'tiny' FLARE-layout model folder on a coarse 4 mm grid with 64^3 windows (fast on CPU)."""
    import torch

    from repux.config import InferenceSettings, Preprocessing
    from repux.labels import FLARE
    from repux.models.folder import save_model
    from repux.nn import create_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("models") / "tiny-test"
    save_model(
        create_model("tiny", out_channels=FLARE.num_classes),
        out,
        labels=FLARE,
        preprocessing=Preprocessing(spacing=(4.0, 4.0, 4.0)),
        inference=InferenceSettings(roi_size=(64, 64, 64)),
        model_id="tiny-test",
    )
    return out


@pytest.fixture
def blob_dataset(tmp_path):
    return make_blob_dataset(tmp_path / "blobs")
