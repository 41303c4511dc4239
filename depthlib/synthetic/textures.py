"""Procedural materials: the albedo of a :class:`~.types.Material` at object-frame points.

Patterns (checker, stripes, gradient, noise, rings, bricks, planks) are
evaluated on hit points in the object frame, in metres, so they scale with
the object; ``Material.scale`` is in cycles per metre. Value noise is one
baked tileable texture (fixed seed: it is part of the renderer, not of a
scene) that each render shifts by its own offsets (:class:`Tex`). Textures
are anti-aliased by the pixel footprint (:class:`Footprint`, metres per
pixel on the surface): a pattern loses contrast from 1/4 cycle per pixel on
and shows its mean colour from 1/2. Albedo comes out as (3, ...) float32 in
0..1. Also here: the baked sensor-noise field of the photo film.
"""

from __future__ import annotations

import functools

import numpy as np

from depthlib.synthetic.types import Material


_TEX = 256                # baked noise texture: texels per side, one period
_TEX_CELLS = 16           # value-noise lattice cells across it (coarsest octave)
_TEX_PER_CELL = float(_TEX // _TEX_CELLS)
_TEX_BIAS = 131072.0      # keeps texel coordinates positive before the int cast (wraps anyway)


@functools.lru_cache(maxsize=1)
def _noise_texture() -> np.ndarray:
    """A tileable fractal value-noise texture in [0, 1] (flat, float32), baked once per process.

    Sampling a baked texture costs one gather per pixel, about a quarter of
    evaluating smooth value noise; scenes vary it with offsets and scales.
    The seed is fixed because the texture is part of the renderer, not of a scene.
    """
    rng = np.random.default_rng(20240609)
    out = np.zeros((_TEX, _TEX))
    for octave, amp in ((1, 1.0), (2, 0.5), (4, 0.25)):
        cells = _TEX_CELLS * octave
        lattice = rng.random((cells, cells))
        x = np.arange(_TEX) * (cells / _TEX)
        i0 = np.floor(x).astype(int)
        f = x - i0
        f = f * f * (3.0 - 2.0 * f)
        i1 = (i0 + 1) % cells
        rows = lattice[:, i0] * (1.0 - f) + lattice[:, i1] * f          # (cells, TEX)
        out += amp * (rows[i0] * (1.0 - f)[:, None] + rows[i1] * f[:, None])
    out = (out - out.min()) / (out.max() - out.min())
    return np.ascontiguousarray(out, dtype=np.float32).ravel()


@functools.lru_cache(maxsize=1)
def grain_field() -> np.ndarray:
    """Unit Gaussian sensor noise (512 x 512), cropped at a random offset per photo."""
    return np.random.default_rng(1234567).standard_normal((512, 512), dtype=np.float32)


class Tex:
    """Noise lookups for one render: the baked texture plus this scene's offsets."""

    def __init__(self, rng):
        self.table = _noise_texture()
        self.off = [float(x) for x in rng.uniform(0.0, _TEX, 8)]

    def noise(self, u, v, salt: int = 0):
        """Smooth noise in [0, 1]; u, v in lattice cells (features about one cell wide)."""
        ou = _TEX_BIAS + self.off[(2 * salt) % 8] + 37.0 * salt
        ov = _TEX_BIAS + self.off[(2 * salt + 1) % 8] + 91.0 * salt
        iu = (u * _TEX_PER_CELL + ou).astype(np.int32)
        iv = (v * _TEX_PER_CELL + ov).astype(np.int32)
        iu &= _TEX - 1
        iv &= _TEX - 1
        iv <<= 8
        iv |= iu
        return np.take(self.table, iv)


def _frac(x):
    return x - np.floor(x)


def _pattern(mat: Material, x, y, z, tex: Tex, salt: int):
    """Pattern value in [0, 1] (0 = ``color``, 1 = ``color2``), or None for a solid colour."""
    p, s = mat.pattern, float(mat.scale)
    a0, a1, a2 = (float(c) for c in mat.axis)
    if p == "checker":
        f = np.floor(x * s) + np.floor(y * s) + np.floor(z * s)
        return f - 2.0 * np.floor(f * 0.5)
    if p == "stripes":
        return (_frac((x * a0 + y * a1 + z * a2) * s) < 0.5).astype(np.float32)
    if p == "gradient":
        return np.clip((x * a0 + y * a1 + z * a2) * s + 0.5, 0.0, 1.0)
    if p == "noise":
        u = (x * a0 + y * a1 + z * a2) * s
        v = (x * a2 - y * a0 + z * a1) * s
        return tex.noise(u, v, salt)
    if p == "rings":
        h = x * a0 + y * a1 + z * a2
        r2 = np.maximum(x * x + y * y + z * z - h * h, 0.0)
        return (_frac(np.sqrt(r2) * s) < 0.5).astype(np.float32)
    if p == "bricks":  # courses along object z, joints offset every other course
        hz = z * (2.0 * s)
        hx = (x + y) * s + 0.5 * np.floor(hz)
        mortar = (_frac(hz) < 0.1) | (_frac(hx) < 0.05)
        return mortar.astype(np.float32)
    if p == "planks":  # boards across ``axis``, wood grain along it
        h = x * a0 + y * a1 + z * a2
        across = (x + y + z - h) * s
        board = np.floor(across)
        g = tex.noise(h * 0.5 + board * 7.0, across * 4.0, salt)
        return np.minimum(g * 0.85 + (_frac(across) < 0.04), 1.0)
    return None


class Footprint:
    """Metres per pixel on a surface (for texture anti-aliasing), computed only if needed.

    ``lower`` and ``upper`` bound it over the surface (``upper`` where the view
    is not grazing beyond ~75 deg); they let whole objects skip the per-pixel
    footprint, and far objects skip patterns they are too small to show.
    """

    def __init__(self, fn, lower: float, upper: float, scalar: float | None = None):
        self._fn = fn
        self._value = None
        self.lower = lower
        self.upper = upper
        self.scalar = scalar  # one value for the whole surface (small, far objects)

    def get(self):
        if self._value is None:
            self._value = self._fn()
        return self._value


# Frequency of each pattern's finest detail, in multiples of ``Material.scale``, and its mean
# value (what a fully faded pattern shows).
_PATTERN_FREQ = {"checker": 1.0, "stripes": 1.0, "gradient": 0.0, "noise": 2.0, "rings": 1.0,
                 "bricks": 4.0, "planks": 8.0}
_PATTERN_MEAN = {"bricks": 0.15, "planks": 0.5}


def _fade(freq: float, fp: Footprint):
    """Contrast kept by a pattern of ``freq`` cycles/m: 1 below 1/4 cycle per pixel, 0 from 1/2 on.

    None when no pixel of the surface can alias (saves the per-pixel work).
    """
    if freq <= 0.0 or freq * fp.upper < 0.25:
        return None
    if fp.scalar is not None:
        return min(max(2.0 - 4.0 * freq * fp.scalar, 0.0), 1.0)
    return np.clip(2.0 - (4.0 * freq) * fp.get(), 0.0, 1.0)


def material_albedo(mat: Material, x, y, z, fp: Footprint, tex: Tex, salt: int = 0):
    """Albedo as a (3, ...) array (possibly a broadcast view) for object-frame points in metres."""
    c1 = np.asarray(mat.color, np.float32)
    c2 = np.asarray(mat.color2, np.float32)
    freq = _PATTERN_FREQ.get(mat.pattern, 0.0) * float(mat.scale)
    if mat.pattern in _PATTERN_FREQ and freq * fp.lower >= 0.5:
        # Too far for any pixel to resolve the pattern: its average colour.
        c1 = c1 + (c2 - c1) * np.float32(_PATTERN_MEAN.get(mat.pattern, 0.5))
        pat = None
    else:
        pat = _pattern(mat, x, y, z, tex, salt)
    shape = (3,) + x.shape
    if pat is None:
        rgb = np.broadcast_to(c1.reshape((3,) + (1,) * x.ndim), shape)
    else:
        fade = _fade(freq, fp)
        if fade is not None:
            pat = (pat - 0.5) * fade + 0.5
        rgb = pat * (c2 - c1).reshape((3,) + (1,) * x.ndim)
        rgb += c1.reshape((3,) + (1,) * x.ndim)
    gs = float(mat.grain_scale)
    if mat.grain > 0.0 and gs * fp.lower < 0.25:
        n = tex.noise((x + 0.37 * z) * gs, (y - 0.53 * z) * gs, salt + 3)
        mod = (n - 0.5) * (2.0 * float(mat.grain))
        fade = _fade(2.0 * gs, fp)
        if fade is not None:
            mod *= fade
        mod += 1.0
        rgb = rgb * mod
    return rgb
