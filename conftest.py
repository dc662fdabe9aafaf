"""Shared pytest configuration: real-data location and small deterministic settings."""

import os
from pathlib import Path

import pytest

DATA_ROOT = Path(
    os.environ.get("SKANOMALY_DATA", Path(__file__).resolve().parent.parent / "shared" / "data")
)


def pytest_configure(config):
    # Small, deterministic CPU work; the suite must run on 2 cores.
    import torch

    torch.manual_seed(0)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist runs two workers side by side (pyproject's addopts):
        # one thread each, or the two would fight over the same 2 cores.
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)


@pytest.fixture(scope="session")
def data_root():
    return DATA_ROOT


def mvtec_category(name):
    """Path of a ../shared/data category, or skip the test when it is absent."""
    root = DATA_ROOT / name
    if not (root / "train").is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


@pytest.fixture
def few_calibration_images():
    """Tests on a handful of images: the threshold's "too few calibration
    samples" warning is expected there, and silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*calibration samples cannot guarantee")
        yield
