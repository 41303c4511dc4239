"""Data types of the generator: what to render (:class:`SceneSpec` and its parts), what comes out (:class:`Scene`).

Plain dataclasses, no behaviour beyond :meth:`Camera.from_angles`. Units and
frames, shared by every module of the package:

* lengths in metres, angles in degrees where a name ends in ``_deg``;
  colours are RGB triples in 0..1;
* world frame: z up, the ground is the plane z = 0;
* camera frame: OpenCV's (x right, y down, z forward); ``camera_to_world``
  is a 4x4 rigid transform from camera to world coordinates and ``K`` the
  3x3 pinhole intrinsics, with pixel ``(row i, col j)`` centred at ``(u, v) = (j, i)``;
* a :class:`Primitive` is a canonical shape (see :mod:`.geometry`) placed by
  ``center``, ``rotation`` and per-axis half ``size``.

:data:`STYLES`, :data:`SHAPES` and :data:`PATTERNS` name what the samplers
draw and the renderer accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


STYLES = ("synthetic", "photo", "street")
SHAPES = ("sphere", "box", "cylinder")
PATTERNS = ("solid", "checker", "stripes", "gradient", "noise", "rings", "bricks", "planks")


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
