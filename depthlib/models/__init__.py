"""Depth Anything V2 models: build, load released weights, export.

>>> from depthlib.models import build_model, load_released, export_released
"""

from depthlib.models.checkpoints import export_released, load_released, load_state_dict_file, load_state_strict
from depthlib.models.depth_anything import DepthAnythingV2, build_model
from depthlib.models.encoders import MODEL_SPECS, PATCH_SIZE, get_spec

__all__ = ["DepthAnythingV2", "MODEL_SPECS", "PATCH_SIZE", "build_model", "export_released", "get_spec",
           "load_released", "load_state_dict_file", "load_state_strict"]
