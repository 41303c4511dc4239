"""The "photo" style: stand-ins for unlabeled real photographs in the demo pipeline.

Natural palettes; objects built from primitives at their real sizes
(:func:`entity`: trees, bushes, houses, rocks, cars, poles outdoors; tables,
cabinets, chairs, pots, balls in a room); grass, dirt, asphalt or paving
(:func:`photo_ground`); daylight with a warmer low sun, clouds and sun glow
(:func:`daylight`). About 20% of scenes are rooms. The renderer adds the
film (tone curve, vignetting, blur, sensor noise); these images are usually
stored as JPEG. Sizes in metres, angles in degrees. :func:`entity`,
:func:`photo_ground` and :func:`daylight` also dress the street style.
"""

from __future__ import annotations

import math

import numpy as np

from depthlib.synthetic.geometry import rot_x, rot_z
from depthlib.synthetic.sampling import (
    bounding_radius, camera_clearance_ok, choose, ground_spot, random_rotation, unit_vector,
)
from depthlib.synthetic.types import Camera, Light, Material, Primitive, Room, SceneSpec, Sky


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


def photo_ground(rng, kinds=(0.45, 0.2, 0.2, 0.15)) -> Material:
    """Grass, dirt, asphalt or paving, with probabilities proportional to ``kinds``."""
    kind = choose(rng, ["grass", "dirt", "asphalt", "paving"], kinds)
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
    spot, dist = ground_spot(rng, cam_pos, yaw, hfov, dmin, dmax)
    heading = rng.uniform(0.0, 360.0)
    rot = rot_z(heading)
    kinds = (["table", "cabinet", "pot", "ball", "chair"] if indoor
             else ["tree", "house", "rock", "car", "pole", "bush", "tree"])
    kind = kinds[int(rng.integers(len(kinds)))]
    return entity(rng, kind, spot, rot, cam_pos)


def entity(rng, kind: str, spot: np.ndarray, rot: np.ndarray, cam_pos) -> list[Primitive]:
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
                          (cr, cr, cr * rng.uniform(0.8, 1.3)), rot_z(rng.uniform(0, 360)),
                          Material(color=leaf, color2=_darker(leaf, 0.45), pattern="noise",
                                   scale=float(rng.uniform(1.5, 4.0)), axis=unit_vector(rng), grain=0.35,
                                   grain_scale=float(rng.uniform(6.0, 12.0)))))
    elif kind == "bush":
        leaf = _pick(rng, _GREENS, 0.15)
        r = rng.uniform(0.3, 1.2)
        parts.append(("sphere", (0, 0, r * 0.6), (r * rng.uniform(1.0, 1.6), r, r * 0.8), np.eye(3),
                      Material(color=leaf, color2=_darker(leaf, 0.5), pattern="noise", scale=3.0,
                               axis=unit_vector(rng), grain=0.4, grain_scale=10.0)))
    elif kind == "house":
        w, d, hgt = rng.uniform(3.0, 8.0), rng.uniform(3.0, 7.0), rng.uniform(2.5, 6.0)
        brick = rng.random() < 0.5
        wall = _pick(rng, _BRICK if brick else _PLASTER)
        mat = (Material(color=wall, color2=(0.75, 0.72, 0.66), pattern="bricks", scale=float(rng.uniform(3.0, 5.0)),
                        grain=0.15, grain_scale=3.0) if brick else
               Material(color=wall, color2=_darker(wall, 0.85), pattern="noise", scale=0.6, axis=unit_vector(rng),
                        grain=0.15, grain_scale=5.0))
        parts.append(("box", (0, 0, hgt / 2), (w / 2, d / 2, hgt / 2), np.eye(3), mat))
        roof = _pick(rng, _ROOF)
        rs = d / 2 / math.sqrt(2.0)
        parts.append(("box", (0, 0, hgt), (w / 2 + 0.3, rs * 1.05, rs * 1.05), rot_x(45.0),
                      Material(color=roof, color2=_darker(roof, 0.7), pattern="stripes", scale=4.0,
                               axis=(0.0, 0.7, 0.7), grain=0.2, grain_scale=4.0)))
    elif kind == "rock":
        r = math.exp(rng.uniform(math.log(0.2), math.log(2.0)))
        stone = _pick(rng, _STONE, 0.1)
        parts.append(("sphere", (0, 0, r * rng.uniform(0.2, 0.6)), tuple(r * rng.uniform(0.6, 1.4, 3)),
                      random_rotation(rng),
                      Material(color=stone, color2=_darker(stone, 0.6), pattern="noise", scale=float(rng.uniform(1.0, 4.0)),
                               axis=unit_vector(rng), grain=0.3, grain_scale=float(rng.uniform(5.0, 15.0)))))
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
            parts.append(("cylinder", (sx * L_ * 0.65, 0, 0.32), (0.32, 0.32, W_ + 0.02), rot_x(90.0),
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
                      Material(color=leaf, color2=_darker(leaf, 0.5), pattern="noise", scale=8.0, axis=unit_vector(rng),
                               grain=0.4, grain_scale=25.0)))
    else:  # ball
        r = rng.uniform(0.1, 0.3)
        c = _pick(rng, _FABRIC + _CAR)
        parts.append(("sphere", (0, 0, r), (r, r, r), np.eye(3),
                      Material(color=c, color2=(0.9, 0.9, 0.9), pattern="stripes", scale=2.0, axis=unit_vector(rng))))
    out = []
    for shape, c, size, r, mat in parts:
        center = spot + rot @ np.asarray(c, dtype=np.float64)
        radius = bounding_radius(shape, size)
        if not camera_clearance_ok(cam_pos, center, radius):
            return []
        out.append(Primitive(shape, tuple(float(x) for x in center), tuple(float(x) for x in size), rot @ r, mat))
    return out


def sample_photo(rng, seed, height, width) -> SceneSpec:
    """A photo-style scene of ``height`` x ``width`` pixels, drawn with ``rng`` (a :class:`~.sampling.Rand`)."""
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
        rot = rot_z(room_yaw)
        cam_local = np.array([rng.uniform(-0.6, 0.6) * (half[0] - 0.5), rng.uniform(-0.6, 0.6) * (half[1] - 0.5), 0.0])
        cam_pos = rot @ cam_local + np.array([0.0, 0.0, rng.uniform(1.1, 1.7)])
        wall = _pick(rng, _PLASTER, 0.04)
        wood = _pick(rng, _WOOD)
        floor = (Material(color=wood, color2=_darker(wood, 0.7), pattern="planks", scale=float(rng.uniform(4.0, 7.0)),
                          axis=(1.0, 0.0, 0.0)) if rng.random() < 0.6 else
                 Material(color=_pick(rng, _PLASTER), color2=_pick(rng, _STONE), pattern="checker",
                          scale=float(rng.uniform(1.5, 3.0)), grain=0.1))
        room = Room(center=(0.0, 0.0, float(half[2])), size=tuple(half), yaw_deg=room_yaw, floor=floor,
                    walls=Material(color=wall, color2=_darker(wall, 0.9), pattern="noise", scale=0.5, axis=unit_vector(rng),
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
        ground = photo_ground(rng)
        light, sky, fog = daylight(rng, sun_el)
        max_depth = 80.0
    cam = Camera.from_angles(height, width, hfov_deg=hfov, position=tuple(cam_pos), yaw_deg=yaw,
                             pitch_deg=pitch, roll_deg=roll)
    haze = tuple(float(x) for x in (np.array(sky.horizon) * 0.9 + 0.05))
    return SceneSpec(camera=cam, objects=objects, ground=ground, room=room, light=light, sky=sky,
                     haze=haze, fog_distance=fog, max_depth=max_depth, style="photo", seed=seed)


def daylight(rng, sun_el: float) -> tuple[Light, Sky, float]:
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


def _sun(rng, el_deg):
    el = math.radians(el_deg)
    az = rng.uniform(0.0, 2 * math.pi)
    return (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
