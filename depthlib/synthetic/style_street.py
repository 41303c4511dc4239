"""The "street" style: metric fine-tuning data with the photo look.

A road seen from one driving camera rig (:data:`STREET_RIG`: fixed field of
view, camera 1.6 m above the road, near level), with parked cars, trees,
poles, bushes and houses along both kerbs and traffic ahead, all at their
real sizes (the photo style's :func:`~.style_photo.entity`), so that metric
scale can be read from the image. Sizes in metres, angles in degrees.
"""

from __future__ import annotations

import math

import numpy as np

from depthlib.synthetic.geometry import rot_z
from depthlib.synthetic.sampling import choose
from depthlib.synthetic.style_photo import daylight, entity, photo_ground
from depthlib.synthetic.types import Camera, Primitive, SceneSpec


# The camera of every street scene: fixed intrinsics and mounting, as in a driving set such as
# Virtual KITTI 2 (the paper's outdoor metric set). What the camera sees then fixes metric scale.
STREET_RIG = {"hfov_deg": 72.0, "height_m": 1.6, "pitch_deg": (-3.0, 1.0)}

# What stands along a kerb: (kind, weight on a built-up side, weight on an open side, gap to the next in metres)
_KERB = (("car", 0.35, 0.3, (5.0, 12.0)), ("tree", 0.15, 0.35, (6.0, 14.0)), ("pole", 0.1, 0.1, (8.0, 16.0)),
         ("house", 0.3, 0.05, (9.0, 16.0)), ("bush", 0.1, 0.2, (3.0, 7.0)))


def sample_street(rng, seed, height, width) -> SceneSpec:
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
            kind, _, _, gap = _KERB[choose(rng, range(len(_KERB)), [k[1] if built_up else k[2] for k in _KERB])]
            kerb = {"car": -1.2, "tree": 1.0, "pole": 0.4, "bush": 1.8, "house": rng.uniform(2.5, 7.0)}[kind]
            spot = centre + fwd * along + side * sgn * (half_road + kerb)
            heading = math.degrees(road) + 90.0 + (0.0 if kind in ("car", "house") else rng.uniform(0.0, 360.0))
            parts = entity(rng, kind, spot, rot_z(heading), cam_pos)
            if len(objects) + len(parts) <= max_prims:
                objects.extend(parts)
            along += rng.uniform(*gap)
    for _ in range(int(rng.integers(0, 3))):  # traffic ahead, in either lane
        spot = centre + fwd * rng.uniform(6.0, 40.0) + side * rng.uniform(-0.6, 0.6) * half_road
        parts = entity(rng, "car", spot, rot_z(math.degrees(road) + 90.0 + rng.uniform(-5.0, 5.0)), cam_pos)
        if len(objects) + len(parts) <= max_prims:
            objects.extend(parts)
    sun_el = rng.uniform(15.0, 60.0)
    ground = photo_ground(rng, kinds=(0.0, 0.0, 0.75, 0.25))
    light, sky, fog = daylight(rng, sun_el)
    cam = Camera.from_angles(height, width, hfov_deg=hfov, position=tuple(cam_pos), yaw_deg=yaw,
                             pitch_deg=pitch, roll_deg=roll)
    haze = tuple(float(x) for x in (np.array(sky.horizon) * 0.9 + 0.05))
    return SceneSpec(camera=cam, objects=objects, ground=ground, room=None, light=light, sky=sky,
                     haze=haze, fog_distance=fog, max_depth=80.0, style="street", seed=seed)
