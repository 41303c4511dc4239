"""Procedural synthetic scenes with exact per-pixel metric depth.

The teacher of Depth Anything V2 is trained only on synthetic images whose
depth is exact; this module makes such images on a CPU, with no assets and no
I/O, fast enough (about 70-100 scenes per second per core at 256x256, see
``benchmarks/synthetic.py``) that a Ray job can fill a bucket with them on a
plain CPU cluster.

Usage::

    from depthlib.synthetic import render_scene
    scene = render_scene(seed=7, height=256, width=256)      # style="synthetic"
    scene.image   # (H, W, 3) uint8 RGB
    scene.depth   # (H, W) float32 metres, planar depth (camera z), 0 where invalid
    scene.valid   # (H, W) bool, False for sky / far background

    photo = render_scene(seed=7, height=256, width=256, style="photo")
    street = render_scene(seed=7, height=256, width=342, style="street")  # metric fine-tuning data

How it works: a scene is a :class:`SceneSpec` (a pinhole camera, a ground plane
or a closed room, and a list of analytic primitives with procedural materials,
one directional light and a sky). :func:`sample_scene` draws one from a seed;
:func:`render` casts one primary ray per pixel centre, intersects it
analytically with every primitive (vectorised over the pixels of the
primitive's projected bounding box), keeps the nearest hit, shades it
(Lambertian, ambient, one hard shadow ray per pixel against the primitives,
distance haze) and returns a :class:`Scene`.

Conventions (also in docs/synthetic.md):

* Camera frame is OpenCV's: x right, y down, z forward. Pixel ``(row i, col j)``
  has its centre at image coordinates ``(u, v) = (j, i)``, so the ray of that
  pixel is ``K^-1 [j, i, 1]``; ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
* World frame: z up, the ground is the plane z = 0.
* ``camera_to_world`` is a 4x4 rigid transform mapping camera coordinates to
  world coordinates.
* ``depth`` is PLANAR depth: the z coordinate of the hit point in the camera
  frame (what stereo and most datasets call depth), not the distance along
  the ray. Ray length is ``depth * ||K^-1 [j, i, 1]||``. Rays are cast with
  direction ``R K^-1 [j, i, 1]`` whose camera-z component is 1, so the ray
  parameter of the intersection *is* the planar depth: depth is the analytic
  root itself, not a value read back from a z-buffer, and is exact up to
  float32 rounding (relative error ~1e-6).
* Every pixel that sees no surface (sky), or whose surface is farther than
  ``SceneSpec.max_depth`` (ground towards the horizon), has ``valid = False``
  and ``depth = 0``; its colour is sky or haze.

Primitives are canonical shapes (unit sphere, cube [-1, 1]^3, cylinder of
radius 1 and z in [-1, 1]) placed by ``center``, ``rotation`` and per-axis
half ``size``: a world point p maps to the canonical frame by
``M (p - center)`` with ``M = diag(1/size) R^T``. That map is affine, so a ray
keeps its parameter t, and one intersection routine per shape covers spheres
and ellipsoids, cubes and oriented boxes, upright and lying cylinders.

The styles share the renderer and differ in what is sampled and in the
camera "film": ``"synthetic"`` is the teacher's training data (saturated
colours, checker / stripe / ring / gradient / noise textures, flat sky);
``"photo"`` stands in for unlabeled real photographs in the demo pipeline
(natural palettes, trees / houses / rocks / cars / furniture built from
primitives, grass and asphalt, sky with clouds and sun glow, warm light,
tone curve, vignetting, slight blur and sensor noise; usually stored as JPEG);
``"street"`` is metric fine-tuning data with the photo look: a road seen from
one driving camera rig (:data:`STREET_RIG`), objects at their real sizes
along the kerbs, so that metric scale can be read from the image.
"""

from __future__ import annotations

import colorsys
import ctypes
import functools
import io
import math
import os
import random
import sys
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "STYLES", "SHAPES", "PATTERNS", "Scene", "Camera", "Material", "Primitive", "Room",
    "Light", "Sky", "SceneSpec", "sample_scene", "render", "render_scene", "encode_image",
]

STYLES = ("synthetic", "photo", "street")
SHAPES = ("sphere", "box", "cylinder")
PATTERNS = ("solid", "checker", "stripes", "gradient", "noise", "rings", "bricks", "planks")

_NEAR = 0.05  # metres: bounding hulls are clipped to camera z >= this before projecting


# --------------------------------------------------------------------------- data types


@dataclass
class Scene:
    """One rendered scene.

    ``depth`` is planar depth in metres (camera z), exact up to float32 rounding,
    0 where ``valid`` is False (sky, background beyond ``max_depth``).
    """

    image: np.ndarray            # (H, W, 3) uint8 RGB
    depth: np.ndarray            # (H, W) float32 metres
    valid: np.ndarray            # (H, W) bool
    intrinsics: np.ndarray       # (3, 3) float32 K
    camera_to_world: np.ndarray  # (4, 4) float32
    seed: int
    style: str


@dataclass
class Camera:
    """Pinhole camera: image size, intrinsics K and a camera-to-world pose."""

    height: int
    width: int
    K: np.ndarray                # (3, 3)
    camera_to_world: np.ndarray  # (4, 4)

    @classmethod
    def from_angles(cls, height: int, width: int, *, hfov_deg: float, position=(0.0, 0.0, 1.5),
                    yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> "Camera":
        """A camera at ``position`` looking along +y when all angles are zero.

        ``yaw`` turns left about world z, ``pitch`` tilts up (negative looks
        down), ``roll`` turns about the optical axis. ``hfov_deg`` is the
        horizontal field of view; pixels are square and the principal point
        is the image centre ``((W - 1) / 2, (H - 1) / 2)``.
        """
        fx = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        K = np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
        y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
        rz = np.array([[math.cos(y), -math.sin(y), 0.0], [math.sin(y), math.cos(y), 0.0], [0.0, 0.0, 1.0]])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
        # Columns: camera x (right) = world x, camera y (down) = world -z, camera z (forward) = world y.
        base = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
        roll = np.array([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0], [0.0, 0.0, 1.0]])
        pose = np.eye(4)
        pose[:3, :3] = rz @ rx @ base @ roll
        pose[:3, 3] = position
        return cls(height=height, width=width, K=K, camera_to_world=pose)


@dataclass
class Material:
    """Procedural albedo: ``color`` and ``color2`` mixed by a pattern.

    Patterns are evaluated on the object-frame hit point in metres, so they
    scale with the object; ``scale`` is in cycles per metre (for ``gradient``:
    per-metre slope). ``grain`` > 0 multiplies the albedo by value noise of
    frequency ``grain_scale`` (surface dirt, foliage, stone).
    """

    color: tuple = (0.7, 0.7, 0.7)
    color2: tuple = (0.2, 0.2, 0.2)
    pattern: str = "solid"
    scale: float = 1.0
    axis: tuple = (1.0, 0.0, 0.0)
    grain: float = 0.0
    grain_scale: float = 4.0


@dataclass
class Primitive:
    """An analytic shape: canonical ``shape`` mapped by ``center``, ``rotation``, half ``size``.

    sphere: radii ``size`` (equal = sphere, else ellipsoid); box: half
    extents; cylinder: radii ``size[:2]`` about the local z axis and half
    height ``size[2]``.
    """

    shape: str
    center: tuple
    size: tuple
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    material: Material = field(default_factory=Material)


@dataclass
class Room:
    """A closed box seen from inside (floor at its bottom face, walls, ceiling)."""

    center: tuple
    size: tuple                  # half extents
    yaw_deg: float = 0.0
    floor: Material = field(default_factory=Material)
    walls: Material = field(default_factory=Material)
    ceiling: Material = field(default_factory=Material)


@dataclass
class Light:
    """Directional light (``direction`` points towards the light) plus ambient."""

    direction: tuple = (0.3, -0.4, 0.866)
    color: tuple = (1.0, 1.0, 1.0)
    ambient: tuple = (0.3, 0.3, 0.3)
    ground_ambient: tuple | None = None  # if set: hemisphere ambient (``ambient`` from above)


@dataclass
class Sky:
    zenith: tuple = (0.35, 0.55, 0.9)
    horizon: tuple = (0.8, 0.88, 0.95)
    clouds: float = 0.0          # cloud cover 0..1 (drawn only if > 0)
    cloud_height: float = 800.0  # metres
    cloud_scale: float = 1.0 / 900.0
    sun_glow: float = 0.0


@dataclass
class SceneSpec:
    """Everything :func:`render` needs; :func:`sample_scene` draws one from a seed."""

    camera: Camera
    objects: list = field(default_factory=list)
    ground: Material | None = field(default_factory=Material)  # the plane z = 0, or None
    room: Room | None = None
    light: Light = field(default_factory=Light)
    sky: Sky = field(default_factory=Sky)
    haze: tuple = (0.8, 0.85, 0.9)
    fog_distance: float | None = None  # metres; None = no haze
    max_depth: float = 80.0            # surfaces farther than this are invalid
    style: str = "synthetic"
    seed: int = 0                      # drives noise lattices and sensor noise


# --------------------------------------------------------------------------- analytic intersections
# Each routine takes the ray in the shape's canonical frame, origin (ox, oy, oz)
# and direction (dx, dy, dz) as scalars or broadcastable float32 arrays, and
# returns the entry and exit parameters (tn, tf); the ray misses where
# ``not (tn <= tf)`` (NaN included). t is the original ray parameter since the
# canonical map is affine.


def _sphere_interval(ox, oy, oz, dx, dy, dz):
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - 1.0
    # Discriminant from the ray's closest approach to the centre: stable for far,
    # small spheres, where b*b - a*c would cancel catastrophically in float32.
    k = b / a
    fx = ox - k * dx
    fy = oy - k * dy
    fz = oz - k * dz
    s = np.sqrt(a * (1.0 - (fx * fx + fy * fy + fz * fz)))
    q = -b - np.copysign(s, b)
    t1 = q / a
    t2 = c / q
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _slab(o, d):
    inv = 1.0 / d
    t1 = (-1.0 - o) * inv
    t2 = (1.0 - o) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _box_interval(ox, oy, oz, dx, dy, dz):
    nx, fx = _slab(ox, dx)
    ny, fy = _slab(oy, dy)
    nz, fz = _slab(oz, dz)
    return np.maximum(np.maximum(nx, ny), nz), np.minimum(np.minimum(fx, fy), fz)


def _cylinder_interval(ox, oy, oz, dx, dy, dz):
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - 1.0
    k = b / a
    fx = ox - k * dx
    fy = oy - k * dy
    s = np.sqrt(a * (1.0 - (fx * fx + fy * fy)))
    q = -b - np.copysign(s, b)
    t1 = q / a
    t2 = c / q
    nz, fz = _slab(oz, dz)
    return np.maximum(np.minimum(t1, t2), nz), np.minimum(np.maximum(t1, t2), fz)


_INTERVAL = {"sphere": _sphere_interval, "box": _box_interval, "cylinder": _cylinder_interval}


def _entry(shape, o, dx, dy, dz):
    """Parameter where camera rays (one origin ``o``, per-pixel directions) enter a canonical shape.

    Returns ``(t, ok)``: the ray hits where ``ok`` (None = everywhere) and ``t > 0``;
    NaN marks misses too. From outside a sphere the near root is ``c / (s - b)``,
    which needs no min/max and no sign test.
    """
    ox, oy, oz = o
    if shape == "sphere":
        c = ox * ox + oy * oy + oz * oz - 1.0
        if c > 0.0:
            a = dx * dx + dy * dy + dz * dz
            b = dx * ox + dy * oy + dz * oz
            k = b / a
            fx = k * dx - ox
            fy = k * dy - oy
            fz = k * dz - oz
            s = np.sqrt((1.0 - (fx * fx + fy * fy + fz * fz)) * a)
            return c / (s - b), None
    tn, tf = _INTERVAL[shape](ox, oy, oz, dx, dy, dz)
    if shape == "sphere":
        return tf, None  # camera inside the sphere: it sees the inner surface
    return tn, tn <= tf


def _axis_slab(o, d: float):
    """Entry and exit of rays with a common scalar direction component ``d`` through |x| <= 1."""
    if d == 0.0:
        inside = np.where(np.abs(o) <= 1.0, np.float32(-np.inf), np.float32(np.inf))
        return inside, -inside
    inv = 1.0 / d
    s = 1.0 if inv > 0.0 else -1.0
    return (o + s) * -inv, (s - o) * inv


def _occluded(shape, ox, oy, oz, d):
    """Whether rays from per-pixel origins along one direction ``d`` hit a canonical shape (t > 0)."""
    dx, dy, dz = d
    if shape == "sphere":
        a = dx * dx + dy * dy + dz * dz
        b = ox * dx + oy * dy + oz * dz
        c = ox * ox + oy * oy + oz * oz - 1.0
        return (b * b - c * a >= 0.0) & ((b < 0.0) | (c < 0.0))
    if shape == "box":
        nx, fx = _axis_slab(ox, dx)
        ny, fy = _axis_slab(oy, dy)
        nz, fz = _axis_slab(oz, dz)
        tf = np.minimum(np.minimum(fx, fy), fz)
        return (np.maximum(np.maximum(nx, ny), nz) <= tf) & (tf > 0.0)
    a = dx * dx + dy * dy
    nz, fz = _axis_slab(oz, dz)
    if a < 1e-12:  # light along the axis
        return (ox * ox + oy * oy <= 1.0) & (fz > 0.0)
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - 1.0
    s = np.sqrt(b * b - c * a)
    inv = 1.0 / a
    tn = np.maximum((b + s) * -inv, nz)
    tf = np.minimum((s - b) * inv, fz)
    return (tn <= tf) & (tf > 0.0)


def _local_normal(shape, p):
    """Outward normals in the canonical frame at canonical surface points ``p`` (3, ...).

    On a face of the cube (or a cap of the cylinder) that coordinate is +-1 up to
    rounding and the others are inside (-1, 1), so truncating the slightly
    scaled coordinate picks the face; only points within 5e-4 of an edge get two.
    """
    if shape == "sphere":
        return p
    if shape == "cylinder":
        q = np.empty_like(p)
        np.trunc(p[2] * 1.0005, out=q[2])
        side = 1.0 - np.abs(q[2])
        np.multiply(p[:2], side, out=q[:2])
        return q
    q = p * 1.0005
    return np.trunc(q, out=q)


# --------------------------------------------------------------------------- textures

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
def _grain_field() -> np.ndarray:
    """Unit Gaussian sensor noise (512 x 512), cropped at a random offset per photo."""
    return np.random.default_rng(1234567).standard_normal((512, 512), dtype=np.float32)


class _Tex:
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


def _pattern(mat: Material, x, y, z, tex: _Tex, salt: int):
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


class _Footprint:
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


def _fade(freq: float, fp: _Footprint):
    """Contrast kept by a pattern of ``freq`` cycles/m: 1 below 1/4 cycle per pixel, 0 from 1/2 on.

    None when no pixel of the surface can alias (saves the per-pixel work).
    """
    if freq <= 0.0 or freq * fp.upper < 0.25:
        return None
    if fp.scalar is not None:
        return min(max(2.0 - 4.0 * freq * fp.scalar, 0.0), 1.0)
    return np.clip(2.0 - (4.0 * freq) * fp.get(), 0.0, 1.0)


def _albedo(mat: Material, x, y, z, fp: _Footprint, tex: _Tex, salt: int = 0):
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


# --------------------------------------------------------------------------- renderer


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


_CUBE = np.array([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])


class _Placed:
    """A primitive's canonical map, precomputed for the renderer (:func:`_place` builds them).

    Rays and points are mapped with float32 matrix products: one numpy call
    per mapping, which matters for the many small arrays of small objects.
    """

    def __init__(self, shape, material, c, size, M, N, uniform, corners):
        self.shape = shape
        self.material = material
        self.c = c                                   # centre, float64 (3,)
        self.M = M                                   # world -> canonical, float64 (3, 3)
        self.M32 = M.astype(np.float32)
        self.mc32 = (M @ c).astype(np.float32)[:, None]
        self.N32 = N.astype(np.float32)              # canonical normal -> world normal
        self.uniform = uniform                       # N keeps unit length
        self.size = size.tolist()
        self.size32 = size.astype(np.float32)[:, None, None]
        self.radius = math.hypot(*self.size)         # encloses the bounding box
        self.corners = corners                       # oriented bounding box, world (8, 3)
        self.box = None   # pixel box of the projected bounding box
        self.ldir = None  # camera rays in the canonical frame, over ``box``
        self.lo = None    # camera centre in the canonical frame

    def to_local_point(self, p):
        """Canonical coordinates of a world point, as three Python floats."""
        q = self.M @ (np.asarray(p, dtype=np.float64) - self.c)
        return float(q[0]), float(q[1]), float(q[2])

    def to_local_dirs(self, d: np.ndarray) -> np.ndarray:
        """Directions (3, h, w) mapped to the canonical frame: one float32 matrix product."""
        return (self.M32 @ d.reshape(3, -1)).reshape(d.shape)


def _place(shapes, materials, centers, sizes, rotations) -> list:
    """:class:`_Placed` for many primitives, with the matrix work done in one batch."""
    if not shapes:
        return []
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    size = np.asarray(sizes, dtype=np.float64).reshape(-1, 3)
    R = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    Rt = R.transpose(0, 2, 1)
    M = Rt / size[:, :, None]
    # The inverse transpose of the map, R diag(1/size), turns canonical normals into world
    # normals; for boxes, spheres and circular cylinders R alone keeps direction and length.
    uniform = [sh == "box" or (sh == "sphere" and s[0] == s[1] == s[2]) or (sh == "cylinder" and s[0] == s[1])
               for sh, s in zip(shapes, size.tolist())]
    N = np.where(np.asarray(uniform)[:, None, None], R, R / size[:, None, :])
    corners = (_CUBE[None] * size[:, None, :]) @ Rt + c[:, None, :]
    return [_Placed(shapes[i], materials[i], c[i], size[i], M[i], N[i], uniform[i], corners[i])
            for i in range(len(shapes))]


class _Frame:
    """Per-render state: camera, per-pixel rays and the nearest-hit buffers (float32)."""

    def __init__(self, spec: SceneSpec):
        cam = spec.camera
        self.H, self.W = H, W = int(cam.height), int(cam.width)
        K = np.asarray(cam.K, dtype=np.float64)
        pose = np.asarray(cam.camera_to_world, dtype=np.float64)
        self.R = pose[:3, :3]
        self.o = pose[:3, 3].copy()
        self.fx, self.fy, self.cx, self.cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        self.f_inv = 1.0 / min(self.fx, self.fy)
        u = (np.arange(W, dtype=np.float64) - self.cx) / self.fx
        v = (np.arange(H, dtype=np.float64) - self.cy) / self.fy
        R = self.R
        # World ray direction per pixel: R @ [u, v, 1]. Its camera-z component is 1, so the
        # ray parameter t of any hit is the planar depth of that hit.
        self.d = np.empty((3, H, W), np.float32)
        for c in range(3):
            np.add((R[c, 0] * u + R[c, 2]).astype(np.float32)[None, :],
                   (R[c, 1] * v).astype(np.float32)[:, None], out=self.d[c])
        self.dx, self.dy, self.dz = self.d
        self.t = np.full((H, W), np.inf, dtype=np.float32)
        self.id = np.full((H, W), -1, dtype=np.int16)

    def pixel_boxes(self, points: np.ndarray) -> list:
        """Pixel boxes (row slice, col slice) covering the convex hulls of point sets, or None.

        ``points`` is (n, m, 3) in world coordinates: n hulls of m points, projected
        together to keep the per-object numpy overhead low.
        """
        pc = (points - self.o) @ self.R  # camera coordinates
        z = pc[..., 2]
        front = z >= _NEAR
        with np.errstate(all="ignore"):
            us = self.fx * pc[..., 0] / z + self.cx
            vs = self.fy * pc[..., 1] / z + self.cy
        all_front = front.all(axis=1)
        rect = np.stack([us.min(axis=1), us.max(axis=1), vs.min(axis=1), vs.max(axis=1)], axis=1).tolist()
        boxes = []
        for i in range(len(points)):
            if all_front[i]:
                boxes.append(self._box(*rect[i]))
            elif front[i].any():
                boxes.append(self._clipped_box(pc[i], front[i]))
            else:
                boxes.append(None)
        return boxes

    def _clipped_box(self, pc: np.ndarray, front: np.ndarray):
        # The hull clipped to z >= near has its vertices among the front points and the
        # points where segments between front and back points cross the near plane.
        f, b = pc[front], pc[~front]
        w = (_NEAR - f[:, None, 2]) / (b[None, :, 2] - f[:, None, 2])
        cut = (f[:, None, :] + w[..., None] * (b[None, :, :] - f[:, None, :])).reshape(-1, 3)
        pts = np.concatenate([f, cut])
        z = np.maximum(pts[:, 2], _NEAR)
        us = self.fx * pts[:, 0] / z + self.cx
        vs = self.fy * pts[:, 1] / z + self.cy
        return self._box(float(us.min()), float(us.max()), float(vs.min()), float(vs.max()))

    def _box(self, u0, u1, v0, v1):
        # Pixel centres sit at integer coordinates; keep every centre inside [u0, u1] x [v0, v1].
        j0 = max(math.floor(u0), 0)
        j1 = min(math.ceil(u1) + 1, self.W)
        i0 = max(math.floor(v0), 0)
        i1 = min(math.ceil(v1) + 1, self.H)
        if j0 >= j1 or i0 >= i1:
            return None
        return (slice(int(i0), int(i1)), slice(int(j0), int(j1)))


def _rows_of(mask: np.ndarray, W: int):
    """The smallest full-width box holding every True pixel of ``mask``, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return None
    return (slice(int(rows[0]), int(rows[-1]) + 1), slice(0, W))


@functools.lru_cache(maxsize=1)
def _tune_malloc() -> bool:
    """Let glibc keep freed numpy temporaries instead of returning them to the OS.

    The renderer makes many short-lived image-sized arrays. With glibc's
    defaults each is mmapped (or the heap is trimmed after it is freed) and
    its pages fault in afresh on the next allocation, which more than doubles
    the render time (measured: 25 ms -> 11 ms per 256x256 scene). Raising the
    mmap and trim thresholds keeps up to 128 MiB of freed heap for reuse. It
    is process-wide and harmless for other code; set
    ``DEPTHLIB_MALLOC_TUNING=0`` to leave the allocator alone.
    """
    if os.environ.get("DEPTHLIB_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1
    ok &= mallopt(m_trim_threshold, 128 << 20) == 1
    ok &= mallopt(m_top_pad, 16 << 20) == 1
    return bool(ok)


def render(spec: SceneSpec) -> Scene:
    """Ray-cast ``spec``: exact planar depth, validity and a shaded RGB image."""
    _tune_malloc()
    with np.errstate(all="ignore"):  # NaN/inf from misses and parallel rays mean "no hit"
        return _render(spec)


def _render(spec: SceneSpec) -> Scene:
    fr = _Frame(spec)
    rng = np.random.default_rng([int(spec.seed) & 0xFFFFFFFFFFFFFFFF, 0x5EED])
    tex = _Tex(rng)
    objs = spec.objects
    placed = _place([p.shape for p in objs], [p.material for p in objs], [p.center for p in objs],
                    [p.size for p in objs], [p.rotation for p in objs])
    room = None
    if spec.room is not None:
        rm = spec.room
        room = _place(["box"], [None], [rm.center], [rm.size], [_rot_z(rm.yaw_deg)])[0]

    _cast_primary(fr, spec, room, placed)
    t, ids = fr.t, fr.id
    valid = (ids >= 0) & (t <= np.float32(spec.max_depth))
    depth = np.where(valid, t, np.float32(0.0))

    normal, albedo = _surfaces(fr, spec, room, placed, tex)
    L = np.asarray(spec.light.direction, dtype=np.float64)
    L /= np.linalg.norm(L)
    ndl = normal[0] * float(L[0]) + normal[1] * float(L[1]) + normal[2] * float(L[2])
    np.maximum(ndl, 0.0, out=ndl)
    _shadows(fr, placed, L, ndl)
    col = _compose(fr, spec, normal, albedo, ndl, L, tex)
    if spec.style in ("photo", "street"):
        img = _photo_film(col, rng, fr.H, fr.W)
    else:
        img = np.empty((fr.H, fr.W, 3), np.float32)
        np.add(col.transpose(1, 2, 0), 0.5, out=img)
        np.clip(img, 0.0, 255.0, out=img)
        img = img.astype(np.uint8)
    return Scene(image=img, depth=depth, valid=valid,
                 intrinsics=np.asarray(spec.camera.K, dtype=np.float32),
                 camera_to_world=np.asarray(spec.camera.camera_to_world, dtype=np.float32),
                 seed=int(spec.seed), style=spec.style)


def _cast_primary(fr: _Frame, spec: SceneSpec, room, placed) -> None:
    """Nearest analytic hit per pixel: ``fr.t`` (planar depth) and ``fr.id`` (0 = ground/room, k = object k)."""
    if room is not None:
        # Seen from inside, a closed box is always hit, at the ray's exit point.
        room.ldir = room.to_local_dirs(fr.d)
        _, tf = _box_interval(*room.to_local_point(fr.o), *room.ldir)
        fr.t[:] = tf
        fr.id[:] = 0
    elif spec.ground is not None and fr.o[2] > 0.0:
        tg = np.float32(-fr.o[2]) / fr.dz
        hit = tg > 0.0
        np.copyto(fr.t, tg, where=hit)
        np.copyto(fr.id, np.int16(0), where=hit)
    boxes = fr.pixel_boxes(np.stack([pl.corners for pl in placed])) if placed else []
    for k, (pl, sl) in enumerate(zip(placed, boxes), start=1):
        pl.box = sl
        if sl is None:
            continue
        pl.ldir = pl.to_local_dirs(fr.d[:, sl[0], sl[1]])
        pl.lo = pl.to_local_point(fr.o)
        tn, ok = _entry(pl.shape, pl.lo, *pl.ldir)
        tb = fr.t[sl]
        take = (tn > 0.0) & (tn < tb)
        if ok is not None:
            take &= ok
        np.copyto(tb, tn, where=take)
        np.copyto(fr.id[sl], np.int16(k), where=take)


def _surfaces(fr: _Frame, spec: SceneSpec, room, placed, tex: _Tex):
    """World normals and albedo of the visible surface at every pixel, as (3, H, W) arrays."""
    H, W = fr.H, fr.W
    t, ids = fr.t, fr.id
    normal = np.zeros((3, H, W), np.float32)
    normal[2] = 1.0
    albedo = np.zeros((3, H, W), np.float32)
    ox, oy, oz = (float(v) for v in fr.o)
    f_inv = fr.f_inv

    if room is not None:
        _room_surface(fr, spec.room, room, normal, albedo, tex)
    elif spec.ground is not None:
        sl = _rows_of(ids == 0, W)
        if sl is not None:
            tt = t[sl]
            dz = fr.dz[sl]
            gx = tt * fr.dx[sl] + ox
            gy = tt * fr.dy[sl] + oy
            # Pixel footprint on the plane: ray length / (f * |cos|), with |cos| = |dz| / |d|.
            fp = _Footprint(lambda: tt * (fr.dx[sl] ** 2 + fr.dy[sl] ** 2 + dz * dz)
                            * np.float32(f_inv) / np.maximum(-dz, 0.02), oz * f_inv, math.inf)
            rgb = _albedo(spec.ground, gx, gy, np.zeros_like(gx), fp, tex, salt=0)
            np.copyto(albedo[:, sl[0], sl[1]], rgb, where=ids[sl] == 0)

    for k, pl in enumerate(placed, start=1):
        sl = pl.box
        if sl is None:
            continue
        m = ids[sl] == k
        if not m.any():
            continue
        tt = t[sl]
        h, w = tt.shape
        p = pl.ldir * tt  # canonical hit points: lo + t * ldir
        p += np.asarray(pl.lo, np.float32)[:, None, None]
        q = _local_normal(pl.shape, p)
        wn = (pl.N32 @ q.reshape(3, -1)).reshape(3, h, w)
        if not pl.uniform:
            wn /= np.sqrt(np.einsum("ihw,ihw->hw", wn, wn))

        def footprint(sl=sl, tt=tt, wn=wn):
            d = fr.d[:, sl[0], sl[1]]
            cosd = np.abs(np.einsum("ihw,ihw->hw", wn, d))
            return tt * np.einsum("ihw,ihw->hw", d, d) * np.float32(f_inv) / np.maximum(cosd, 0.05)

        # Ray lengths to the nearest and farthest points; |d| is 1 on the axis and about
        # 1.8 in the corners of a 90 deg view.
        dist = math.dist(pl.c, fr.o)
        # Small and far: one footprint for the object (its typical ray length and slant).
        scalar = 1.3 * dist * f_inv if dist > 6.0 * pl.radius else None
        fp = _Footprint(footprint, max(dist - pl.radius, 0.0) * f_inv, 1.8 * (dist + pl.radius) * f_inv, scalar)
        p *= pl.size32  # object frame, metres
        rgb = _albedo(pl.material, p[0], p[1], p[2], fp, tex, salt=k)
        np.copyto(normal[:, sl[0], sl[1]], wn, where=m)
        np.copyto(albedo[:, sl[0], sl[1]], rgb, where=m)
    return normal, albedo


def _room_surface(fr: _Frame, room_spec: Room, room: _Placed, normal, albedo, tex: _Tex):
    lo = room.to_local_point(fr.o)
    p = room.ldir.copy()
    p *= fr.t
    p += np.asarray(lo, np.float32)[:, None, None]
    q = _local_normal("box", p)
    # seen from inside: the normal points into the room
    np.negative((room.N32 @ q.reshape(3, -1)).reshape(q.shape), out=normal)
    faces = q[2]
    p *= room.size32
    t = fr.t

    def footprint():
        cosd = np.abs(np.einsum("ihw,ihw->hw", normal, fr.d))
        return t * np.einsum("ihw,ihw->hw", fr.d, fr.d) * np.float32(fr.f_inv) / np.maximum(cosd, 0.05)

    fp = _Footprint(footprint, 0.0, 1.8 * 2.0 * math.hypot(*room.size) * fr.f_inv)
    albedo[:] = _albedo(room_spec.walls, p[0], p[1], p[2], fp, tex, salt=1)
    for face, mat, salt in ((faces < 0.0, room_spec.floor, 2), (faces > 0.0, room_spec.ceiling, 3)):
        sl = _rows_of(face, fr.W)
        if sl is None:
            continue
        sub = _Footprint(lambda sl=sl: fp.get()[sl], fp.lower, fp.upper)
        ps = p[:, sl[0], sl[1]]
        rgb = _albedo(mat, ps[0], ps[1], ps[2], sub, tex, salt=salt)
        np.copyto(albedo[:, sl[0], sl[1]], rgb, where=face[sl])


def _shadows(fr: _Frame, placed, L, ndl) -> None:
    """Zero ``ndl`` where the shadow ray towards the light hits a primitive (one ray per pixel)."""
    lz = float(L[2])
    if not placed or lz <= 0.05:
        return
    world = None
    # Receivers have z >= 0, so a primitive's shadow volume lies in the hull of its bounding
    # box corners and their projections along -L onto the ground.
    corners = np.stack([pl.corners for pl in placed])
    drop = np.maximum(corners[..., 2:3], 0.0) / lz
    boxes = fr.pixel_boxes(np.concatenate([corners, corners - drop * L], axis=1))
    for k, (pl, sl) in enumerate(zip(placed, boxes), start=1):
        if sl is None:
            continue
        lit = ndl[sl] > 0.0
        if not lit.any():
            continue
        if world is None:  # hit points, (3, H, W)
            world = fr.d * fr.t
            world += fr.o.astype(np.float32)[:, None, None]
        h, w = lit.shape
        lo = pl.M32 @ world[:, sl[0], sl[1]].reshape(3, -1)
        lo -= pl.mc32
        occ = _occluded(pl.shape, lo[0], lo[1], lo[2], tuple(float(v) for v in pl.M @ L)).reshape(h, w)
        # A convex primitive cannot shadow its own lit side, so skip its own pixels.
        occ &= lit
        occ &= fr.id[sl] != k
        np.copyto(ndl[sl], np.float32(0.0), where=occ)


def _compose(fr: _Frame, spec: SceneSpec, normal, albedo, ndl, L, tex: _Tex):
    """Lambertian colour in 0..255 units, haze, and sky, as a (3, H, W) array."""
    light = spec.light
    amb = 255.0 * np.asarray(light.ambient, np.float32)[:, None, None]
    sun = 255.0 * np.asarray(light.color, np.float32)[:, None, None]
    if light.ground_ambient is not None:  # hemisphere light: sky from above, ground bounce from below
        g = 255.0 * np.asarray(light.ground_ambient, np.float32)[:, None, None]
        shade = (normal[2] * 0.5 + 0.5) * (amb - g)
        shade += g
    else:
        shade = np.broadcast_to(amb, albedo.shape)
    col = ndl * sun
    col += shade
    col *= albedo
    if spec.fog_distance:
        dn = np.sqrt(np.einsum("ihw,ihw->hw", fr.d, fr.d))
        # Aerial haze by ray length; it also hides the cut where ground becomes invalid.
        keep = np.exp(fr.t * dn * np.float32(-1.0 / spec.fog_distance))
        haze = 255.0 * np.asarray(spec.haze, np.float32)[:, None, None]
        col -= haze
        col *= keep
        col += haze
    sky = fr.id < 0
    sl = _rows_of(sky, fr.W)
    if sl is not None:
        np.copyto(col[:, sl[0], sl[1]], _sky(fr, spec.sky, sl, L, tex), where=sky[sl])
    return col


def _sky(fr: _Frame, sk: Sky, sl, L, tex: _Tex):
    dx, dy, dz = fr.dx[sl], fr.dy[sl], fr.dz[sl]
    inv = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
    el = np.clip(dz * inv, 0.0, 1.0)  # sine of the elevation
    hor = 255.0 * np.asarray(sk.horizon, np.float32)[:, None, None]
    zen = 255.0 * np.asarray(sk.zenith, np.float32)[:, None, None]
    rgb = np.sqrt(el) * (zen - hor)
    rgb += hor
    if sk.sun_glow > 0.0:
        g = np.maximum((dx * float(L[0]) + dy * float(L[1]) + dz * float(L[2])) * inv, 0.0)
        g *= g
        g *= g
        g *= g
        g *= g            # cos^16: wide glow
        g2 = g * g
        g2 *= g2          # cos^64: tight glow
        glow = (g * 0.35 + g2 * 0.65) * (255.0 * float(sk.sun_glow))
        rgb += glow * np.asarray((1.0, 0.9, 0.7), np.float32)[:, None, None]
    if sk.clouds > 0.0:
        # Clouds on a plane at cloud_height: they shrink and thin out towards the horizon.
        tc = float(sk.cloud_height * sk.cloud_scale) / np.maximum(dz, 0.02)
        cu = tc * dx + float(fr.o[0] * sk.cloud_scale)
        cv = tc * dy + float(fr.o[1] * sk.cloud_scale)
        n = tex.noise(cu, cv, 5)
        thr = 1.0 - float(sk.clouds)
        cover = np.clip((n - thr) * 4.0, 0.0, 1.0) * np.clip(el * 12.0, 0.0, 1.0)
        shade = np.clip((n - thr) * -0.66 + 1.0, 0.78, 1.0) * 255.0
        white = shade * np.asarray((1.0, 0.99, 0.97), np.float32)[:, None, None]
        white -= rgb
        white *= cover
        rgb += white
    return rgb


def _photo_film(col, rng, H, W):
    """Camera look of the photo style: exposure, tone shoulder, vignetting, slight blur, sensor noise."""
    r = 0.5 * max(H, W)
    yy = ((np.arange(H, dtype=np.float32) - (H - 1) / 2.0) / r) ** 2
    xx = ((np.arange(W, dtype=np.float32) - (W - 1) / 2.0) / r) ** 2
    exposure = float(rng.uniform(1.0, 1.4)) / 255.0
    strength = float(rng.uniform(0.08, 0.2))
    vig = (1.0 - strength * yy)[:, None] * ((1.0 - strength * xx) * exposure)[None, :]
    oi, oj = (int(v) for v in rng.integers(0, 512, 2))
    grain = _grain_field().take(np.arange(oi, oi + H) % 512, axis=0).take(np.arange(oj, oj + W) % 512, axis=1)
    grain *= 255.0 * float(rng.uniform(0.004, 0.015))
    grain += 0.5  # rounding offset for the uint8 cast
    blur = rng.random() < 0.6
    x = col * vig
    # Soft shoulder instead of hard clipping: 1.6 x / (1 + 0.6 x), scaled to 0..255.
    y = x * 408.0
    x *= 0.6
    x += 1.0
    y /= x
    y += grain
    if H > 2 and W > 2 and blur:  # mild optical blur: separable [1, 2, 1] / 4
        b = y * 0.5
        b[:, :, 1:-1] += (y[:, :, :-2] + y[:, :, 2:]) * 0.25
        b[:, :, 0] += y[:, :, 0] * 0.5
        b[:, :, -1] += y[:, :, -1] * 0.5
        y[:, 1:-1] = b[:, 1:-1] * 0.5
        y[:, 1:-1] += (b[:, :-2] + b[:, 2:]) * 0.25
        y[:, 0] = b[:, 0]
        y[:, -1] = b[:, -1]
    out = np.empty((H, W, 3), np.float32)
    np.clip(y.transpose(1, 2, 0), 0.0, 255.0, out=out)
    return out.astype(np.uint8)


# --------------------------------------------------------------------------- scene sampling


class _Rand:
    """The random draws of scene sampling, built on Python's Mersenne Twister.

    Sampling makes a few hundred scalar draws per scene; numpy's Generator
    costs about 1-2 us per scalar call, ``random.Random`` a tenth of that.
    Every draw is derived from ``random()``, the one method whose sequence
    Python keeps stable across versions. The method names follow numpy's.
    """

    def __init__(self, seed: int, stream: int):
        self.random = random.Random((int(seed) & 0xFFFFFFFFFFFFFFFF) * 16 + stream).random

    def uniform(self, low=0.0, high=1.0, size=None):
        if size is None:
            return low + (high - low) * self.random()
        return np.array([low + (high - low) * self.random() for _ in range(size)])

    def integers(self, low, high=None):
        """An int in [low, high), or in [0, low) without ``high``."""
        if high is None:
            low, high = 0, low
        return low + min(int(self.random() * (high - low)), high - low - 1)

    def normal(self, loc=0.0, scale=1.0):
        u = 1.0 - self.random()  # (0, 1]
        return loc + scale * math.sqrt(-2.0 * math.log(u)) * math.cos(2.0 * math.pi * self.random())

    def standard_normal(self, size):
        return np.array([self.normal() for _ in range(size)])


def _choose(rng, options, weights):
    """``options[i]`` with probability proportional to ``weights[i]`` (cheaper than rng.choice)."""
    x = rng.random() * sum(weights)
    for option, w in zip(options, weights):
        x -= w
        if x < 0.0:
            return option
    return options[-1]


def _hsv(rng, h=None, s=(0.4, 1.0), v=(0.35, 1.0)):
    hue = rng.random() if h is None else h
    return colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*s), rng.uniform(*v))


def _unit(rng):
    v = [rng.normal() for _ in range(3)]
    n = math.hypot(*v) or 1.0
    return tuple(x / n for x in v)


def _random_rotation(rng) -> np.ndarray:
    q = [rng.normal() for _ in range(4)]
    n = math.hypot(*q) or 1.0
    w, x, y, z = (v / n for v in q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def _synthetic_material(rng, big: bool = False) -> Material:
    kind = _choose(rng, ["solid", "checker", "stripes", "gradient", "noise", "rings"],
                   [0.12, 0.24, 0.2, 0.12, 0.2, 0.12])
    c1 = _hsv(rng)
    c2 = _hsv(rng) if rng.random() < 0.6 else tuple(x * rng.uniform(0.15, 0.5) for x in c1)
    lo, hi = (0.1, 1.5) if big else (0.8, 10.0)
    scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if kind == "gradient":
        scale = float(rng.uniform(0.05, 0.6)) if big else float(rng.uniform(0.3, 1.5))
    return Material(color=c1, color2=c2, pattern=str(kind), scale=scale, axis=_unit(rng),
                    grain=float(rng.uniform(0.0, 0.3)) if rng.random() < 0.3 else 0.0,
                    grain_scale=float(rng.uniform(1.0, 8.0)))


def _camera_clearance_ok(cam_pos, center, radius, margin=0.25):
    return math.dist(center, cam_pos) > radius + margin


def _vertical_half_extent(shape, size, rot) -> float:
    """Half of the world-z extent of an oriented primitive (to rest it on the ground)."""
    row = np.asarray(rot, dtype=np.float64)[2] * np.asarray(size, dtype=np.float64)
    if shape == "box":
        return float(np.abs(row).sum())
    if shape == "sphere":
        return float(np.linalg.norm(row))
    # cylinder: axis part plus the radius-weighted tilt of the cross-section
    return float(abs(row[2]) + math.hypot(row[0], row[1]))


def _bounding_radius(shape, size):
    size = np.asarray(size, dtype=np.float64)
    if shape == "box":
        return float(np.linalg.norm(size))
    if shape == "cylinder":
        return float(math.hypot(max(size[0], size[1]), size[2]))
    return float(size.max())


def _ground_spot(rng, cam_pos, yaw_deg, hfov_deg, dmin, dmax, spread=1.15):
    """A point on the ground in (or near) the horizontal view cone, log-uniform in distance."""
    dist = math.exp(rng.uniform(math.log(dmin), math.log(dmax)))
    az = math.radians(yaw_deg + rng.uniform(-0.5, 0.5) * hfov_deg * spread)
    return np.array([cam_pos[0] - dist * math.sin(az), cam_pos[1] + dist * math.cos(az), 0.0]), dist


def _random_primitive(rng, cam_pos, yaw, hfov, dmin, dmax, material_fn) -> Primitive | None:
    if rng.random() < 0.75:  # most objects beyond arm's length, so near ones do not crowd every view
        dmin = max(dmin, min(2.5, 0.5 * dmax))
    spot, dist = _ground_spot(rng, cam_pos, yaw, hfov, dmin, dmax)
    shape = _choose(rng, SHAPES, [0.32, 0.4, 0.28])
    # Half size grows with distance (so far objects stay visible) and stays below a third of
    # the distance (so near ones do not fill the view).
    s = min(math.exp(rng.uniform(math.log(0.12), math.log(1.2))) * max(1.0, dist / 8.0), dist / 3.0)
    rot = _rot_z(rng.uniform(0, 360))
    if shape == "sphere":
        size = np.full(3, s)
        if rng.random() < 0.35:
            size = size * rng.uniform(0.5, 1.6, 3)
            rot = rot @ _random_rotation(rng) if rng.random() < 0.5 else rot
    elif shape == "box":
        size = s * rng.uniform(0.35, 1.6, 3)
        if rng.random() < 0.2:
            rot = _random_rotation(rng)
    else:
        r = s * rng.uniform(0.3, 1.0)
        size = np.array([r, r, s * rng.uniform(0.5, 2.0)])
        if rng.random() < 0.25:  # lying on its side
            rot = _rot_z(rng.uniform(0, 360)) @ _rot_x(90.0)
    half_h = _vertical_half_extent(shape, size, rot)
    z = half_h if rng.random() < 0.8 else half_h + rng.uniform(0.2, 2.5)
    center = spot + np.array([0.0, 0.0, z])
    radius = _bounding_radius(shape, size)
    if not _camera_clearance_ok(cam_pos, center, radius):
        return None
    return Primitive(shape=shape, center=tuple(center), size=tuple(float(x) for x in size),
                     rotation=rot, material=material_fn(rng))


def _sample_synthetic(rng, seed, height, width) -> SceneSpec:
    hfov = rng.uniform(40.0, 90.0)
    yaw = rng.uniform(0.0, 360.0)
    roll = float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
    indoor = rng.random() < 0.3
    objects: list[Primitive] = []
    if indoor:
        half = np.array([rng.uniform(2.0, 8.0), rng.uniform(2.0, 10.0), rng.uniform(1.2, 2.5)])
        room_yaw = rng.uniform(0.0, 360.0)
        rot = _rot_z(room_yaw)
        cam_local = np.array([rng.uniform(-0.7, 0.7) * (half[0] - 0.5), rng.uniform(-0.7, 0.7) * (half[1] - 0.5), 0.0])
        cam_h = rng.uniform(0.4, min(2.0, 2 * half[2] - 0.3))
        cam_pos = rot @ cam_local + np.array([0.0, 0.0, cam_h])
        room = Room(center=(0.0, 0.0, float(half[2])), size=tuple(half), yaw_deg=room_yaw,
                    floor=_synthetic_material(rng, big=True), walls=_synthetic_material(rng, big=True),
                    ceiling=_synthetic_material(rng, big=True))
        pitch = rng.uniform(-30.0, 10.0)
        n = int(rng.integers(6, 15))
        reach = float(2.0 * np.linalg.norm(half[:2]))
        for _ in range(n):
            p = _random_primitive(rng, cam_pos, yaw, hfov, 0.5, reach, _synthetic_material)
            if p is None:
                continue
            loc = rot.T @ np.asarray(p.center)  # room frame (the room is centred over the origin)
            if np.any(np.abs(loc[:2]) > half[:2] - 0.1) or loc[2] > 2 * half[2]:
                continue
            objects.append(p)
        ground = None
        max_depth = float(2.0 * np.linalg.norm(half)) + 1.0
        fog = None
    else:
        room = None
        cam_h = math.exp(rng.uniform(math.log(0.3), math.log(4.0)))
        if rng.random() < 0.1:
            cam_h = rng.uniform(4.0, 12.0)
        pitch = rng.uniform(-25.0, 5.0) - min(cam_h, 10.0)
        cam_pos = np.array([rng.uniform(-50, 50), rng.uniform(-50, 50), cam_h])
        n = int(rng.integers(8, 21))
        for _ in range(n):
            p = _random_primitive(rng, cam_pos, yaw, hfov, 0.5, 60.0, _synthetic_material)
            if p is not None:
                objects.append(p)
        _maybe_walls(rng, objects, cam_pos, yaw, lambda r: _synthetic_material(r, big=True))
        ground = _synthetic_material(rng, big=True)
        max_depth = 80.0
        fog = float(rng.uniform(120.0, 400.0)) if rng.random() < 0.6 else None
    cam = Camera.from_angles(height, width, hfov_deg=hfov, position=tuple(cam_pos), yaw_deg=yaw,
                             pitch_deg=pitch, roll_deg=roll)
    el = math.radians(rng.uniform(25.0, 75.0))
    az = rng.uniform(0.0, 2 * math.pi)
    light = Light(direction=(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)),
                  color=tuple(rng.uniform(0.65, 1.0) * np.array(_hsv(rng, s=(0.0, 0.25), v=(1.0, 1.0)))),
                  ambient=tuple(rng.uniform(0.25, 0.5) * np.array(_hsv(rng, s=(0.0, 0.3), v=(1.0, 1.0)))))
    zen = _hsv(rng, s=(0.2, 0.9), v=(0.5, 1.0))
    hor = _hsv(rng, s=(0.0, 0.5), v=(0.6, 1.0))
    haze = tuple(0.5 * (np.array(hor) + np.array(zen)))
    return SceneSpec(camera=cam, objects=objects, ground=ground, room=room, light=light,
                     sky=Sky(zenith=zen, horizon=hor), haze=haze, fog_distance=fog,
                     max_depth=max_depth, style="synthetic", seed=seed)


def _clear_of_box(cam_pos, center, half, rot, margin=0.3) -> bool:
    """Whether the camera is at least ``margin`` outside an oriented box."""
    local = np.abs(np.asarray(rot).T @ (np.asarray(cam_pos) - np.asarray(center)))
    return bool(np.any(local > np.asarray(half) + margin))


def _maybe_walls(rng, objects, cam_pos, yaw, material_fn):
    fwd = np.array([-math.sin(math.radians(yaw)), math.cos(math.radians(yaw)), 0.0])
    side = np.array([fwd[1], -fwd[0], 0.0])
    ground = cam_pos * np.array([1.0, 1.0, 0.0])
    walls = []
    if rng.random() < 0.35:  # back wall across the view
        half = np.array([rng.uniform(8.0, 40.0), rng.uniform(0.3, 1.0), rng.uniform(2.0, 10.0)])
        center = ground + fwd * rng.uniform(12.0, 55.0) + side * rng.uniform(-8, 8)
        walls.append((center, half, _rot_z(yaw + rng.uniform(-25, 25))))
    if rng.random() < 0.25:  # a street canyon: walls left and right along the view
        for sgn in (-1.0, 1.0):
            half = np.array([rng.uniform(0.3, 1.0), rng.uniform(10.0, 40.0), rng.uniform(2.0, 12.0)])
            center = ground + side * sgn * rng.uniform(3.0, 12.0) + fwd * rng.uniform(half[1] * 0.6, half[1] * 1.2)
            walls.append((center, half, _rot_z(yaw + rng.uniform(-5, 5))))
    for center, half, rot in walls:
        center[2] = half[2]
        if _clear_of_box(cam_pos, center, half, rot):
            objects.append(Primitive("box", tuple(center), tuple(half), rot, material_fn(rng)))


# ---- photo style: natural palettes and composite objects


_GREENS = [(0.20, 0.35, 0.12), (0.28, 0.42, 0.16), (0.16, 0.30, 0.14), (0.35, 0.45, 0.20), (0.22, 0.38, 0.22)]
_BARK = [(0.30, 0.22, 0.14), (0.38, 0.30, 0.22), (0.25, 0.20, 0.16)]
_STONE = [(0.50, 0.48, 0.45), (0.42, 0.40, 0.38), (0.58, 0.55, 0.50), (0.45, 0.42, 0.36)]
_BRICK = [(0.55, 0.25, 0.18), (0.62, 0.35, 0.25), (0.48, 0.22, 0.17)]
_PLASTER = [(0.85, 0.82, 0.74), (0.80, 0.74, 0.62), (0.90, 0.88, 0.84), (0.75, 0.70, 0.60), (0.70, 0.62, 0.52)]
_ROOF = [(0.40, 0.18, 0.14), (0.28, 0.28, 0.30), (0.35, 0.25, 0.20)]
_CAR = [(0.75, 0.75, 0.78), (0.10, 0.10, 0.12), (0.55, 0.08, 0.08), (0.12, 0.20, 0.40), (0.85, 0.85, 0.82),
        (0.35, 0.38, 0.40)]
_WOOD = [(0.55, 0.38, 0.22), (0.65, 0.48, 0.30), (0.42, 0.28, 0.16)]
_FABRIC = [(0.45, 0.50, 0.55), (0.60, 0.30, 0.25), (0.35, 0.40, 0.30), (0.70, 0.65, 0.55), (0.25, 0.28, 0.40)]


def _pick(rng, palette, jitter=0.06):
    c = np.asarray(palette[int(rng.integers(len(palette)))]) * rng.uniform(1 - jitter, 1 + jitter, 3)
    return tuple(float(x) for x in np.clip(c, 0.0, 1.0))


def _darker(c, f):
    return tuple(float(x) * f for x in c)


def _photo_ground(rng, kinds=(0.45, 0.2, 0.2, 0.15)) -> Material:
    """Grass, dirt, asphalt or paving, with probabilities proportional to ``kinds``."""
    kind = _choose(rng, ["grass", "dirt", "asphalt", "paving"], kinds)
    if kind == "grass":
        c = _pick(rng, _GREENS, 0.1)
        return Material(color=c, color2=_darker(c, 0.6), pattern="noise", scale=float(rng.uniform(0.1, 0.4)),
                        axis=(1.0, 0.0, 0.0), grain=0.35, grain_scale=float(rng.uniform(2.0, 5.0)))
    if kind == "dirt":
        c = _pick(rng, [(0.45, 0.36, 0.25), (0.55, 0.45, 0.32), (0.40, 0.33, 0.26)], 0.08)
        return Material(color=c, color2=_pick(rng, _GREENS), pattern="noise", scale=float(rng.uniform(0.05, 0.2)),
                        axis=(0.8, 0.6, 0.0), grain=0.3, grain_scale=float(rng.uniform(2.0, 6.0)))
    if kind == "asphalt":
        c = _pick(rng, [(0.22, 0.22, 0.23), (0.30, 0.30, 0.31)], 0.05)
        return Material(color=c, color2=_darker(c, 0.75), pattern="noise", scale=float(rng.uniform(0.2, 0.6)),
                        axis=(0.6, 0.8, 0.0), grain=0.25, grain_scale=float(rng.uniform(4.0, 10.0)))
    c = _pick(rng, _STONE, 0.08)
    return Material(color=c, color2=_darker(c, 0.55), pattern="bricks", scale=float(rng.uniform(0.8, 2.0)),
                    grain=0.2, grain_scale=6.0)


def _photo_entity(rng, cam_pos, yaw, hfov, dmin, dmax, indoor: bool) -> list[Primitive]:
    spot, dist = _ground_spot(rng, cam_pos, yaw, hfov, dmin, dmax)
    heading = rng.uniform(0.0, 360.0)
    rot = _rot_z(heading)
    kinds = (["table", "cabinet", "pot", "ball", "chair"] if indoor
             else ["tree", "house", "rock", "car", "pole", "bush", "tree"])
    kind = kinds[int(rng.integers(len(kinds)))]
    return _entity(rng, kind, spot, rot, cam_pos)


def _entity(rng, kind: str, spot: np.ndarray, rot: np.ndarray, cam_pos) -> list[Primitive]:
    """The primitives of one object of ``kind`` standing at ``spot`` on the ground, turned by
    ``rot``, at its real-world size; none if one of them would enclose the camera."""
    parts: list[tuple] = []  # (shape, local center, size, rotation, material)
    if kind == "tree":
        h = rng.uniform(2.5, 9.0)
        r = h * rng.uniform(0.02, 0.05)
        bark = _pick(rng, _BARK)
        parts.append(("cylinder", (0, 0, h * 0.35), (r, r, h * 0.35), np.eye(3),
                      Material(color=bark, color2=_darker(bark, 0.6), pattern="noise", scale=3.0,
                               axis=(0.0, 0.0, 1.0), grain=0.3, grain_scale=8.0)))
        leaf = _pick(rng, _GREENS, 0.12)
        for _ in range(int(rng.integers(1, 4))):
            cr = h * rng.uniform(0.18, 0.32)
            parts.append(("sphere", (rng.uniform(-0.3, 0.3) * cr, rng.uniform(-0.3, 0.3) * cr, h * rng.uniform(0.65, 0.85)),
                          (cr, cr, cr * rng.uniform(0.8, 1.3)), _rot_z(rng.uniform(0, 360)),
                          Material(color=leaf, color2=_darker(leaf, 0.45), pattern="noise",
                                   scale=float(rng.uniform(1.5, 4.0)), axis=_unit(rng), grain=0.35,
                                   grain_scale=float(rng.uniform(6.0, 12.0)))))
    elif kind == "bush":
        leaf = _pick(rng, _GREENS, 0.15)
        r = rng.uniform(0.3, 1.2)
        parts.append(("sphere", (0, 0, r * 0.6), (r * rng.uniform(1.0, 1.6), r, r * 0.8), np.eye(3),
                      Material(color=leaf, color2=_darker(leaf, 0.5), pattern="noise", scale=3.0,
                               axis=_unit(rng), grain=0.4, grain_scale=10.0)))
    elif kind == "house":
        w, d, hgt = rng.uniform(3.0, 8.0), rng.uniform(3.0, 7.0), rng.uniform(2.5, 6.0)
        brick = rng.random() < 0.5
        wall = _pick(rng, _BRICK if brick else _PLASTER)
        mat = (Material(color=wall, color2=(0.75, 0.72, 0.66), pattern="bricks", scale=float(rng.uniform(3.0, 5.0)),
                        grain=0.15, grain_scale=3.0) if brick else
               Material(color=wall, color2=_darker(wall, 0.85), pattern="noise", scale=0.6, axis=_unit(rng),
                        grain=0.15, grain_scale=5.0))
        parts.append(("box", (0, 0, hgt / 2), (w / 2, d / 2, hgt / 2), np.eye(3), mat))
        roof = _pick(rng, _ROOF)
        rs = d / 2 / math.sqrt(2.0)
        parts.append(("box", (0, 0, hgt), (w / 2 + 0.3, rs * 1.05, rs * 1.05), _rot_x(45.0),
                      Material(color=roof, color2=_darker(roof, 0.7), pattern="stripes", scale=4.0,
                               axis=(0.0, 0.7, 0.7), grain=0.2, grain_scale=4.0)))
    elif kind == "rock":
        r = math.exp(rng.uniform(math.log(0.2), math.log(2.0)))
        stone = _pick(rng, _STONE, 0.1)
        parts.append(("sphere", (0, 0, r * rng.uniform(0.2, 0.6)), tuple(r * rng.uniform(0.6, 1.4, 3)),
                      _random_rotation(rng),
                      Material(color=stone, color2=_darker(stone, 0.6), pattern="noise", scale=float(rng.uniform(1.0, 4.0)),
                               axis=_unit(rng), grain=0.3, grain_scale=float(rng.uniform(5.0, 15.0)))))
    elif kind == "car":
        paint = _pick(rng, _CAR, 0.03)
        L_, W_, H_ = rng.uniform(1.9, 2.4), rng.uniform(0.85, 1.0), rng.uniform(0.45, 0.6)
        parts.append(("box", (0, 0, 0.3 + H_ / 2), (L_, W_, H_ / 2), np.eye(3),
                      Material(color=paint, color2=_darker(paint, 0.8), pattern="gradient", scale=0.8,
                               axis=(0.0, 0.0, 1.0))))
        parts.append(("box", (rng.uniform(-0.3, 0.2), 0, 0.3 + H_ + 0.3), (L_ * 0.5, W_ * 0.9, 0.3), np.eye(3),
                      Material(color=(0.12, 0.14, 0.16), color2=paint, pattern="gradient", scale=1.2,
                               axis=(0.0, 0.0, -1.0))))
        for sx in (-1, 1):
            parts.append(("cylinder", (sx * L_ * 0.65, 0, 0.32), (0.32, 0.32, W_ + 0.02), _rot_x(90.0),
                          Material(color=(0.06, 0.06, 0.06))))
    elif kind == "pole":
        h = rng.uniform(3.0, 9.0)
        c = _pick(rng, _STONE + [(0.3, 0.32, 0.3)])
        parts.append(("cylinder", (0, 0, h / 2), (0.08, 0.08, h / 2), np.eye(3),
                      Material(color=c, color2=_darker(c, 0.7), pattern="noise", scale=1.0, grain=0.2)))
    elif kind == "table":
        wood = _pick(rng, _WOOD)
        mat = Material(color=wood, color2=_darker(wood, 0.7), pattern="planks", scale=float(rng.uniform(4.0, 8.0)),
                       axis=(1.0, 0.0, 0.0))
        w, d, h = rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.8), rng.uniform(0.7, 0.8)
        parts.append(("box", (0, 0, h), (w, d, 0.025), np.eye(3), mat))
        for sx in (-1, 1):  # trestle ends: two panels instead of four legs
            parts.append(("box", (sx * (w - 0.08), 0, h / 2), (0.03, d - 0.1, h / 2), np.eye(3),
                          Material(color=_darker(wood, 0.8), grain=0.15, grain_scale=12.0)))
    elif kind == "cabinet":
        c = _pick(rng, _WOOD + _PLASTER)
        w, d, h = rng.uniform(0.3, 1.0), rng.uniform(0.25, 0.5), rng.uniform(0.4, 1.1)
        parts.append(("box", (0, 0, h), (w, d, h), np.eye(3),
                      Material(color=c, color2=_darker(c, 0.8), pattern="planks", scale=3.0, axis=(0.0, 0.0, 1.0))))
    elif kind == "chair":
        c = _pick(rng, _FABRIC)
        s = rng.uniform(0.2, 0.28)
        parts.append(("box", (0, 0, 0.42), (s, s, 0.06), np.eye(3), Material(color=c, grain=0.2, grain_scale=20.0)))
        parts.append(("box", (0, -s + 0.04, 0.8), (s, 0.04, 0.32), np.eye(3), Material(color=c, grain=0.2, grain_scale=20.0)))
        parts.append(("cylinder", (0, 0, 0.18), (0.04, 0.04, 0.18), np.eye(3), Material(color=(0.15, 0.15, 0.15))))
    elif kind == "pot":
        c = _pick(rng, [(0.6, 0.35, 0.25), (0.85, 0.85, 0.82), (0.3, 0.35, 0.4)])
        r, h = rng.uniform(0.12, 0.3), rng.uniform(0.15, 0.4)
        parts.append(("cylinder", (0, 0, h), (r, r, h), np.eye(3), Material(color=c, grain=0.1)))
        leaf = _pick(rng, _GREENS)
        parts.append(("sphere", (0, 0, 2 * h + r), (r * 1.3, r * 1.3, r * 1.5), np.eye(3),
                      Material(color=leaf, color2=_darker(leaf, 0.5), pattern="noise", scale=8.0, axis=_unit(rng),
                               grain=0.4, grain_scale=25.0)))
    else:  # ball
        r = rng.uniform(0.1, 0.3)
        c = _pick(rng, _FABRIC + _CAR)
        parts.append(("sphere", (0, 0, r), (r, r, r), np.eye(3),
                      Material(color=c, color2=(0.9, 0.9, 0.9), pattern="stripes", scale=2.0, axis=_unit(rng))))
    out = []
    for shape, c, size, r, mat in parts:
        center = spot + rot @ np.asarray(c, dtype=np.float64)
        radius = _bounding_radius(shape, size)
        if not _camera_clearance_ok(cam_pos, center, radius):
            return []
        out.append(Primitive(shape, tuple(float(x) for x in center), tuple(float(x) for x in size), rot @ r, mat))
    return out


def _sample_photo(rng, seed, height, width) -> SceneSpec:
    hfov = rng.uniform(45.0, 80.0)
    yaw = rng.uniform(0.0, 360.0)
    roll = float(np.clip(rng.normal(0.0, 1.5), -5.0, 5.0))
    indoor = rng.random() < 0.2
    objects: list[Primitive] = []
    max_prims = 18  # primitives cost ~0.3 ms each in numpy call overhead; this keeps 50/s
    sun_el = rng.uniform(15.0, 60.0)
    if indoor:
        half = np.array([rng.uniform(2.0, 5.0), rng.uniform(2.5, 6.0), rng.uniform(1.25, 1.6)])
        room_yaw = rng.uniform(0.0, 360.0)
        rot = _rot_z(room_yaw)
        cam_local = np.array([rng.uniform(-0.6, 0.6) * (half[0] - 0.5), rng.uniform(-0.6, 0.6) * (half[1] - 0.5), 0.0])
        cam_pos = rot @ cam_local + np.array([0.0, 0.0, rng.uniform(1.1, 1.7)])
        wall = _pick(rng, _PLASTER, 0.04)
        wood = _pick(rng, _WOOD)
        floor = (Material(color=wood, color2=_darker(wood, 0.7), pattern="planks", scale=float(rng.uniform(4.0, 7.0)),
                          axis=(1.0, 0.0, 0.0)) if rng.random() < 0.6 else
                 Material(color=_pick(rng, _PLASTER), color2=_pick(rng, _STONE), pattern="checker",
                          scale=float(rng.uniform(1.5, 3.0)), grain=0.1))
        room = Room(center=(0.0, 0.0, float(half[2])), size=tuple(half), yaw_deg=room_yaw, floor=floor,
                    walls=Material(color=wall, color2=_darker(wall, 0.9), pattern="noise", scale=0.5, axis=_unit(rng),
                                   grain=0.05, grain_scale=3.0),
                    ceiling=Material(color=(0.92, 0.92, 0.9)))
        pitch = rng.uniform(-20.0, 5.0)
        reach = float(2.0 * np.linalg.norm(half[:2]))
        for _ in range(int(rng.integers(3, 9))):
            parts = _photo_entity(rng, cam_pos, yaw, hfov, 0.8, reach, indoor=True)
            ok = all(np.all(np.abs((rot.T @ np.asarray(p.center))[:2]) < half[:2] - 0.05) for p in parts)
            if ok and len(objects) + len(parts) <= max_prims:
                objects.extend(parts)
        ground, fog, max_depth = None, None, float(2.0 * np.linalg.norm(half)) + 1.0
        light = Light(direction=_sun(rng, sun_el), color=tuple(np.array((1.0, 0.9, 0.75)) * rng.uniform(0.5, 0.8)),
                      ambient=(0.5, 0.48, 0.45), ground_ambient=(0.3, 0.27, 0.24))
        sky = Sky()
    else:
        room = None
        cam_h = rng.uniform(1.2, 2.0) if rng.random() < 0.8 else rng.uniform(2.0, 10.0)
        pitch = rng.uniform(-12.0, 6.0) - 0.8 * min(cam_h, 10.0)
        cam_pos = np.array([rng.uniform(-50, 50), rng.uniform(-50, 50), cam_h])
        for _ in range(int(rng.integers(5, 13))):
            parts = _photo_entity(rng, cam_pos, yaw, hfov, 1.0, 60.0, indoor=False)
            if len(objects) + len(parts) <= max_prims:
                objects.extend(parts)
        ground = _photo_ground(rng)
        light, sky, fog = _daylight(rng, sun_el)
        max_depth = 80.0
    cam = Camera.from_angles(height, width, hfov_deg=hfov, position=tuple(cam_pos), yaw_deg=yaw,
                             pitch_deg=pitch, roll_deg=roll)
    haze = tuple(float(x) for x in (np.array(sky.horizon) * 0.9 + 0.05))
    return SceneSpec(camera=cam, objects=objects, ground=ground, room=room, light=light, sky=sky,
                     haze=haze, fog_distance=fog, max_depth=max_depth, style="photo", seed=seed)


def _daylight(rng, sun_el: float) -> tuple[Light, Sky, float]:
    """Outdoor light of the photo look: sun (warmer when low), blue sky with clouds, fog distance (m)."""
    warm = rng.uniform(0.0, 1.0) * (1.0 if sun_el < 35 else 0.4)
    sun_col = np.array((1.0, 0.95 - 0.12 * warm, 0.85 - 0.3 * warm)) * rng.uniform(0.9, 1.2)
    zen = _pick(rng, [(0.25, 0.45, 0.80), (0.35, 0.55, 0.85), (0.45, 0.6, 0.8), (0.55, 0.6, 0.68)], 0.05)
    hor = tuple(float(x) for x in np.clip(np.array(zen) * 0.45 + np.array((0.55, 0.55, 0.55)) + warm * np.array((0.1, 0.04, -0.05)), 0, 1))
    light = Light(direction=_sun(rng, sun_el), color=tuple(sun_col),
                  ambient=tuple(np.array(zen) * 0.45 + 0.1), ground_ambient=(0.18, 0.16, 0.12))
    sky = Sky(zenith=zen, horizon=hor, clouds=float(rng.uniform(0.0, 0.7)),
              cloud_height=float(rng.uniform(500.0, 1500.0)), cloud_scale=1.0 / float(rng.uniform(400.0, 1500.0)),
              sun_glow=float(rng.uniform(0.2, 0.6)))
    return light, sky, float(rng.uniform(150.0, 600.0))


# ---- street style: one driving rig, for metric fine-tuning

# The camera of every street scene: fixed intrinsics and mounting, as in a driving set such as
# Virtual KITTI 2 (the paper's outdoor metric set). What the camera sees then fixes metric scale.
STREET_RIG = {"hfov_deg": 72.0, "height_m": 1.6, "pitch_deg": (-3.0, 1.0)}

# What stands along a kerb: (kind, weight on a built-up side, weight on an open side, gap to the next in metres)
_KERB = (("car", 0.35, 0.3, (5.0, 12.0)), ("tree", 0.15, 0.35, (6.0, 14.0)), ("pole", 0.1, 0.1, (8.0, 16.0)),
         ("house", 0.3, 0.05, (9.0, 16.0)), ("bush", 0.1, 0.2, (3.0, 7.0)))


def _sample_street(rng, seed, height, width) -> SceneSpec:
    """A road seen from a car: parked cars, trees, poles and houses along both kerbs, at their
    real sizes, from the camera of :data:`STREET_RIG` (height and pitch jitter a few cm and degrees)."""
    hfov = STREET_RIG["hfov_deg"]
    yaw = rng.uniform(0.0, 360.0)
    pitch = rng.uniform(*STREET_RIG["pitch_deg"])
    roll = float(np.clip(rng.normal(0.0, 0.5), -1.5, 1.5))
    cam_pos = np.array([rng.uniform(-50, 50), rng.uniform(-50, 50), STREET_RIG["height_m"] + rng.uniform(-0.04, 0.04)])
    road = math.radians(yaw + rng.uniform(-10.0, 10.0))  # the road's direction, near the view's
    fwd = np.array([-math.sin(road), math.cos(road), 0.0])
    side = np.array([fwd[1], -fwd[0], 0.0])
    half_road = rng.uniform(2.5, 5.0)
    centre = cam_pos * np.array([1.0, 1.0, 0.0]) + side * rng.uniform(-0.5, 0.5) * half_road
    objects: list[Primitive] = []
    max_prims = 24
    for sgn in (-1.0, 1.0):
        built_up = rng.random() < 0.7
        along = rng.uniform(-3.0, 6.0)
        while along < 50.0:
            kind, _, _, gap = _KERB[_choose(rng, range(len(_KERB)), [k[1] if built_up else k[2] for k in _KERB])]
            kerb = {"car": -1.2, "tree": 1.0, "pole": 0.4, "bush": 1.8, "house": rng.uniform(2.5, 7.0)}[kind]
            spot = centre + fwd * along + side * sgn * (half_road + kerb)
            heading = math.degrees(road) + 90.0 + (0.0 if kind in ("car", "house") else rng.uniform(0.0, 360.0))
            parts = _entity(rng, kind, spot, _rot_z(heading), cam_pos)
            if len(objects) + len(parts) <= max_prims:
                objects.extend(parts)
            along += rng.uniform(*gap)
    for _ in range(int(rng.integers(0, 3))):  # traffic ahead, in either lane
        spot = centre + fwd * rng.uniform(6.0, 40.0) + side * rng.uniform(-0.6, 0.6) * half_road
        parts = _entity(rng, "car", spot, _rot_z(math.degrees(road) + 90.0 + rng.uniform(-5.0, 5.0)), cam_pos)
        if len(objects) + len(parts) <= max_prims:
            objects.extend(parts)
    sun_el = rng.uniform(15.0, 60.0)
    ground = _photo_ground(rng, kinds=(0.0, 0.0, 0.75, 0.25))
    light, sky, fog = _daylight(rng, sun_el)
    cam = Camera.from_angles(height, width, hfov_deg=hfov, position=tuple(cam_pos), yaw_deg=yaw,
                             pitch_deg=pitch, roll_deg=roll)
    haze = tuple(float(x) for x in (np.array(sky.horizon) * 0.9 + 0.05))
    return SceneSpec(camera=cam, objects=objects, ground=ground, room=None, light=light, sky=sky,
                     haze=haze, fog_distance=fog, max_depth=80.0, style="street", seed=seed)


def _sun(rng, el_deg):
    el = math.radians(el_deg)
    az = rng.uniform(0.0, 2 * math.pi)
    return (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))


def sample_scene(seed: int, height: int, width: int, style: str = "synthetic") -> SceneSpec:
    """Draw a random :class:`SceneSpec`; the same arguments always give the same scene."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    rng = _Rand(seed, STYLES.index(style))
    if style == "photo":
        return _sample_photo(rng, int(seed), height, width)
    if style == "street":
        return _sample_street(rng, int(seed), height, width)
    return _sample_synthetic(rng, int(seed), height, width)


def render_scene(seed: int, height: int, width: int, style: str = "synthetic") -> Scene:
    """A random scene of the given style, rendered: ``render(sample_scene(...))``."""
    return render(sample_scene(seed, height, width, style))


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
