"""Depth Anything V2 models: build, load released weights, export.

>>> from depthlib.models import build_model, load_released, export_released

Names are imported on first use, so ``depthlib.models.specs`` (the size
table) loads without torch and timm in workers that only need sizes.
"""

from importlib import import_module

_EXPORTS = {
    "DepthAnythingV2": "depth_anything", "build_model": "depth_anything",
    "export_released": "checkpoints", "load_released": "checkpoints", "released_bytes": "checkpoints",
    "load_state_dict_file": "checkpoints", "load_state_strict": "checkpoints", "check_checkpoint": "checkpoints",
    "MODEL_SPECS": "specs", "PATCH_SIZE": "specs", "get_spec": "specs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"depthlib.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'depthlib.models' has no attribute {name!r}")
