"""The released layout's tensors (``pretrained.*``, ``depth_head.*``) as a ``.safetensors`` file.

Same keys and float32 values as the released ``.pth`` (``released_bytes``),
so ``depthlib.models.load_released`` and the official code's
``load_state_dict(strict=True)`` (after ``safetensors.torch.load_file``) both
read it; the file format itself holds tensors only, so loading runs no code.
The header's metadata names the encoder and head.
"""

from __future__ import annotations

import torch

from depthlib.models.checkpoints import model_state_to_released
from depthlib.models.depth_anything import DepthAnythingV2


def released_safetensors_bytes(model: DepthAnythingV2, metadata: dict[str, str] | None = None) -> bytes:
    """``model`` in the released key layout as ``.safetensors`` bytes (float32, contiguous)."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    meta = {"format": "pt", "layout": "depth_anything_v2_released", "encoder": model.encoder,
            "depth": "metric" if model.metric else "relative"}
    if model.metric:
        meta["max_depth"] = repr(model.max_depth)
    meta.update(metadata or {})
    return save(model_state_to_released(state, model.encoder), metadata=meta)
