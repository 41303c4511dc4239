"""A rendered image as PNG or JPEG bytes (Pillow), the form the shards and image folders store."""

from __future__ import annotations

import io

import numpy as np


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 92) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image as PNG or JPEG bytes."""
    from PIL import Image

    fmt = fmt.lower()
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=6)
    elif fmt in ("jpeg", "jpg"):
        pil.save(buf, format="JPEG", quality=int(quality))
    else:
        raise ValueError(f"image format must be 'png' or 'jpeg', got {fmt!r}")
    return buf.getvalue()
