"""Procedural synthetic scenes with exact per-pixel metric depth.

The teacher of Depth Anything V2 is trained only on synthetic images whose
depth is exact; this package makes such images on a CPU, with no assets and no
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

Layout, one job per module (each module's docstring gives its units and
conventions); the names below are the public ones, imported from here:

* :mod:`.types`: the data types (:class:`SceneSpec`, :class:`Scene`, ...)
  and :data:`STYLES`, :data:`SHAPES`, :data:`PATTERNS`;
* :mod:`.geometry`: analytic ray intersections with the canonical shapes,
  their normals, rotation matrices;
* :mod:`.textures`: procedural patterns, baked noise, footprint anti-aliasing;
* :mod:`.renderer`: :func:`render` (ray casting, shading, sky, film);
* :mod:`.sampling`: the seeded draws and placement helpers the styles share;
* :mod:`.style_synthetic`, :mod:`.style_photo`, :mod:`.style_street`: one
  sampler per style (:data:`STREET_RIG` is in the last);
* :mod:`.scenes`: :func:`sample_scene` and :func:`render_scene`;
* :mod:`.encoding`: :func:`encode_image`.

Imports run one way, with no cycles: ``types``, ``geometry`` and
``textures`` at the bottom; ``renderer`` and ``sampling`` on them; the style
modules on those (``style_street`` uses ``style_photo``'s objects, ground and
daylight); ``scenes`` on top. No module imports from this ``__init__``.
"""

from depthlib.synthetic.encoding import encode_image
from depthlib.synthetic.renderer import render
from depthlib.synthetic.scenes import render_scene, sample_scene
from depthlib.synthetic.style_street import STREET_RIG
from depthlib.synthetic.types import (
    PATTERNS, SHAPES, STYLES, Camera, Light, Material, Primitive, Room, Scene, SceneSpec, Sky,
)

__all__ = [
    "STYLES", "SHAPES", "PATTERNS", "Scene", "Camera", "Material", "Primitive", "Room",
    "Light", "Sky", "SceneSpec", "sample_scene", "render", "render_scene", "encode_image", "STREET_RIG",
]
