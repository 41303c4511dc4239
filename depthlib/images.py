"""Decoding untrusted image bytes into RGB arrays, with a reason for every refusal.

A labelling job reads millions of objects it did not write; any of them may be
empty, truncated, not an image, a decompression bomb, 16-bit, CMYK, palette or
rotated by EXIF. ``decode_image`` either returns an ``H x W x 3`` uint8 RGB
array (EXIF orientation applied) or raises ``ImageDecodeError`` whose
``reason`` is one of ``SKIP_REASONS``, so callers can record a skip instead of
crashing.

Pillow reads every header and classifies every refusal. The pixels of a JPEG
decoded at full size come from ``torchvision.io.decode_jpeg`` (libjpeg-turbo
without Pillow's per-strip and mode-conversion overhead): bit-identical to
Pillow's for baseline, progressive, greyscale and EXIF-rotated JPEGs,
at about half the CPU time (``benchmarks/pseudo_label.py --stand-in``). When
it refuses a file, Pillow decodes it and gives the reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image



def _jpeg_decoder():
    """torchvision's ``(decode_jpeg, ImageReadMode)``, imported on first use (a process that never
    decodes a JPEG does not load it), or ``None`` without it: deprecated in torchvision 0.29 in
    favour of TorchCodec; Pillow decodes everything if it goes."""
    global _JPEG_DECODER
    if _JPEG_DECODER is False:
        try:
            from torchvision.io import ImageReadMode, decode_jpeg

            _JPEG_DECODER = (decode_jpeg, ImageReadMode)
        except ImportError:  # pragma: no cover
            _JPEG_DECODER = None
    return _JPEG_DECODER


_JPEG_DECODER = False  # not looked up yet

MIN_SIDE = 14  # one ViT patch
DEFAULT_MAX_PIXELS = 100_000_000  # ~10k x 10k; larger headers are treated as decompression bombs

SKIP_REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_small", "too_large", "unsupported_mode",
                "read_error")


class ImageDecodeError(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit greyscale: PIL's convert("RGB") clips at 255, so scale by the type's range.
        a = np.nan_to_num(np.asarray(img).astype(np.float64))
        if mode == "F":  # float images have no fixed range: stretch min..max
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo if hi > lo else 1.0)
        else:  # 16-bit data (PIL opens 16-bit PNGs as "I" too) over 0..65535
            a = a / max(65535.0, float(a.max()))
        g = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Drop alpha, as the official cv2.imread path does.
        img = img.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> np.ndarray:
    """Encoded bytes -> ``H x W x 3`` uint8 RGB, EXIF orientation applied.

    Raises ``ImageDecodeError`` with a ``reason`` for anything that is not a
    usable image.
    """
    return decode_image_reduced(data, max_pixels, min_side)[0]


def decode_image_reduced(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
                         at_least=None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`decode_image`, returning ``(pixels, (H, W))``: the image's own
    size (EXIF orientation applied) and its pixels, which a JPEG may decode at
    1/2, 1/4 or 1/8 scale.

    ``at_least(h, w) -> (min_h, min_w)``: given the stored size, the smallest
    size the caller can use; a JPEG is then decoded by libjpeg's DCT scaling at
    the smallest scale that is still at least that big (PIL ``draft``), which
    costs a fraction of a full decode for a large photo. ``None``, or any other
    format: full size, ``pixels.shape[:2] == (H, W)``.
    """
    if not data:
        raise ImageDecodeError("empty", "zero-byte object")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError("too_large", f"{w}x{h} exceeds {max_pixels} pixels")
            if min(w, h) < min_side:
                raise ImageDecodeError("too_small", f"{w}x{h} has a side below {min_side} px")
            if at_least is not None and img.format == "JPEG":
                min_h, min_w = at_least(h, w)
                img.draft("RGB", (min_w, min_h))  # a no-op unless a whole DCT scale fits
                if img.size == (w, h):  # none did: full size, as without ``at_least``
                    at_least = None
            if at_least is None and img.format == "JPEG" and img.mode in ("RGB", "L"):  # CMYK: Pillow's Adobe rules
                fast = _decode_jpeg_fast(data)
                if fast is not None:
                    return fast, ((w, h) if _exif_transposes(img) else (h, w))
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError("too_large", str(e)) from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "unrecognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        # The header was recognised, so the pixel data is short (truncated) or damaged (corrupt).
        truncated = isinstance(e, EOFError) or "truncat" in msg.lower()
        reason = "truncated" if truncated else "corrupt"
        raise ImageDecodeError(reason, msg) from None
    transposed = _exif_transposes(img)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a corrupt EXIF block must not lose an otherwise good image
        transposed = False
    try:
        return _to_rgb_array(img), ((w, h) if transposed else (h, w))
    except (OSError, ValueError) as e:
        raise ImageDecodeError("unsupported_mode", f"mode {img.mode}: {e}") from None


def _decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """A JPEG's pixels as ``H x W x 3`` uint8 RGB (EXIF orientation applied) by libjpeg-turbo
    through torchvision, or ``None`` when it refuses the file (Pillow then decodes it and
    names the reason). A truncated file raises here as it does in Pillow."""
    decoder = _jpeg_decoder()
    if decoder is None:
        return None
    import torch

    decode_jpeg, read_mode = decoder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29's deprecation notice
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode.RGB,
                              apply_exif_orientation=True)
    except RuntimeError:
        return None
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


def _exif_transposes(img: Image.Image) -> bool:
    """Whether the EXIF orientation swaps width and height (orientations 5-8)."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False
