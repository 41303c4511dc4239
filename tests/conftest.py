"""Shared pytest set-up.

Fixtures live in their own modules under ``tests/`` and are registered here:
``fixtures_ray`` (one local Ray cluster per test session), ``fixtures_s3``
(a real S3-compatible server, SeaweedFS's ``weed``, per test session) and
``fixtures_models`` (a tiny released-layout checkpoint).
"""

import os

# Keep torch and numpy from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

pytest_plugins = ["fixtures_ray", "fixtures_s3", "fixtures_models", "fixtures_datasets"]


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests where CUDA is absent (torch imported only if any are collected)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
