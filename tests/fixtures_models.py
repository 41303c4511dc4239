"""Model fixtures shared by the test session.

``tiny_checkpoint``: a randomly initialised ``tiny`` model (seed 0) exported in
the released layout, written once per session.
"""

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    import torch

    from depthlib.models import build_model, export_released

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_model") / "tiny.pth"
    export_released(build_model("tiny"), path)
    return str(path)
