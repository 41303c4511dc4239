"""The one table of Depth Anything V2 model sizes (no heavy imports).

Every size-dependent number lives in ``MODEL_SPECS``: the timm constructor of
the DINOv2 encoder, the four encoder blocks the DPT head reads, and the head
widths (DESIGN.md §1). Kept free of torch/timm imports so CPU-only workers
(decoding, writing) can validate an encoder name cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PATCH_SIZE = 14
PRETRAIN_GRID = 37  # DINOv2 position embeddings are learned at 518 / 14 = 37 patches a side.


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of one encoder variant and the DPT head that goes with it."""

    timm_name: str
    layers: tuple[int, int, int, int]  # encoder blocks read by the head (0-based)
    features: int  # DPT fusion width
    out_channels: tuple[int, int, int, int]  # DPT per-level projection widths
    timm_kwargs: dict = field(default_factory=dict)
    swiglu: bool = False  # ViT-G's MLP is SwiGLU (w12/w3 in released checkpoints)


MODEL_SPECS: dict[str, ModelSpec] = {
    "vits": ModelSpec("vit_small_patch14_dinov2", (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": ModelSpec("vit_base_patch14_dinov2", (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": ModelSpec("vit_large_patch14_dinov2", (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "vitg": ModelSpec("vit_giant_patch14_dinov2", (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536), swiglu=True),
    # A 4-block, 64-wide patch-14 ViT with a narrow head: fast tests and the CPU demo.
    "tiny": ModelSpec("vit_small_patch14_dinov2", (0, 1, 2, 3), 16, (16, 32, 64, 64),
                      timm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 2}),
}


def get_spec(encoder: str) -> ModelSpec:
    try:
        return MODEL_SPECS[encoder]
    except KeyError:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {sorted(MODEL_SPECS)}") from None
