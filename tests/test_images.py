"""Image decoding: the fast JPEG path gives Pillow's pixels exactly, and every refusal its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from depthlib import images
from depthlib.images import ImageDecodeError, decode_image, decode_image_reduced


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (2 + c) + y * (3 - c)) % 256 for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _pillow(data: bytes) -> np.ndarray:
    """The reference: Pillow's decode, EXIF orientation applied, RGB."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def _rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(_photo(37, 61, orientation), exif=exif, quality=90)


CASES = {
    "baseline 4:2:0": _jpeg(_photo(97, 131), quality=92),
    "baseline 4:4:4": _jpeg(_photo(64, 80, 1), quality=95, subsampling=0),
    "progressive": _jpeg(_photo(75, 50, 2), progressive=True),
    "greyscale": _jpeg(_photo(40, 56, 3).convert("L")),
    "cmyk (Pillow decodes it)": _jpeg(_photo(40, 40, 4).convert("CMYK")),
    **{f"exif orientation {o}": _rotated(o) for o in range(1, 9)},
}


@pytest.mark.parametrize("name", list(CASES))
def test_jpeg_decode_equals_pillow_exactly(name):
    assert images._jpeg_decoder() is not None, "torchvision's decoder is part of the stack"
    data = CASES[name]
    got, hw = decode_image_reduced(data)
    want = _pillow(data)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and got.flags.writeable
    assert got.shape == want.shape and hw == want.shape[:2]
    assert np.array_equal(got, want)


def test_the_fast_path_is_the_one_that_ran():
    data = CASES["exif orientation 6"]
    fast = images._decode_jpeg_fast(data)
    assert fast is not None and np.array_equal(fast, _pillow(data))
    assert images._decode_jpeg_fast(data[:-200]) is None  # refused: Pillow then names the reason


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_and_broken_jpegs_keep_their_reasons(cut):
    data = CASES["baseline 4:2:0"]
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data[:int(len(data) * cut)])
    assert e.value.reason == "truncated"
    with pytest.raises(ImageDecodeError) as e:
        decode_image(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)
    assert e.value.reason == "not_an_image"


def test_a_reduced_decode_still_uses_the_dct_scale():
    big = _jpeg(_photo(400, 640, 5), quality=95)
    pixels, hw = decode_image_reduced(big, at_least=lambda h, w: (h // 4, w // 4))
    assert hw == (400, 640) and pixels.shape == (100, 160, 3)
    # nothing to reduce: the full-size (fast) path, same pixels as Pillow
    pixels, hw = decode_image_reduced(big, at_least=lambda h, w: (h, w))
    assert pixels.shape == (400, 640, 3) and np.array_equal(pixels, _pillow(big))


@pytest.mark.parametrize("progressive", [False, True])
def test_every_truncation_pillow_refuses_is_refused(progressive):
    """The fast decoder must never hand back part of a picture that Pillow would refuse: cut the
    file at many points; wherever Pillow refuses, decode_image refuses with Pillow's reason."""
    data = _jpeg(_photo(64, 96, 6), quality=90, progressive=progressive)
    for cut in [*range(1, 24), *range(24, len(data) - 200, 61)]:
        part = data[:len(data) - cut]
        try:
            Image.open(io.BytesIO(part)).load()
            pillow_refuses = False
        except Exception:  # noqa: BLE001 - whatever Pillow raises
            pillow_refuses = True
        if pillow_refuses:
            with pytest.raises(ImageDecodeError) as e:
                decode_image(part)
            assert e.value.reason in ("truncated", "corrupt"), (cut, e.value)  # corrupt: cut inside a scan
        else:
            assert np.array_equal(decode_image(part), _pillow(part)), cut
