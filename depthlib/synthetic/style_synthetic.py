"""The "synthetic" style: the teacher's training scenes.

Outdoors (a ground plane, random primitives from 0.5 to 60 m, sometimes a
back wall or a street canyon, haze in most scenes) or, in about 30% of
scenes, a closed room with primitives inside. Saturated random colours,
checker / stripe / ring / gradient / noise textures, a flat two-colour sky,
one coloured directional light. Field of view 40-90 deg, camera 0.3-12 m
above the ground; sizes in metres, angles in degrees.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from depthlib.synthetic.geometry import rot_x, rot_z
from depthlib.synthetic.sampling import (
    bounding_radius, camera_clearance_ok, choose, ground_spot, random_rotation, unit_vector,
)
from depthlib.synthetic.types import SHAPES, Camera, Light, Material, Primitive, Room, SceneSpec, Sky


def _hsv(rng, h=None, s=(0.4, 1.0), v=(0.35, 1.0)):
    hue = rng.random() if h is None else h
    return colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*s), rng.uniform(*v))


def _synthetic_material(rng, big: bool = False) -> Material:
    kind = choose(rng, ["solid", "checker", "stripes", "gradient", "noise", "rings"],
                   [0.12, 0.24, 0.2, 0.12, 0.2, 0.12])
    c1 = _hsv(rng)
    c2 = _hsv(rng) if rng.random() < 0.6 else tuple(x * rng.uniform(0.15, 0.5) for x in c1)
    lo, hi = (0.1, 1.5) if big else (0.8, 10.0)
    scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if kind == "gradient":
        scale = float(rng.uniform(0.05, 0.6)) if big else float(rng.uniform(0.3, 1.5))
    return Material(color=c1, color2=c2, pattern=str(kind), scale=scale, axis=unit_vector(rng),
                    grain=float(rng.uniform(0.0, 0.3)) if rng.random() < 0.3 else 0.0,
                    grain_scale=float(rng.uniform(1.0, 8.0)))


def _vertical_half_extent(shape, size, rot) -> float:
    """Half of the world-z extent of an oriented primitive (to rest it on the ground)."""
    row = np.asarray(rot, dtype=np.float64)[2] * np.asarray(size, dtype=np.float64)
    if shape == "box":
        return float(np.abs(row).sum())
    if shape == "sphere":
        return float(np.linalg.norm(row))
    # cylinder: axis part plus the radius-weighted tilt of the cross-section
    return float(abs(row[2]) + math.hypot(row[0], row[1]))


def _random_primitive(rng, cam_pos, yaw, hfov, dmin, dmax, material_fn) -> Primitive | None:
    if rng.random() < 0.75:  # most objects beyond arm's length, so near ones do not crowd every view
        dmin = max(dmin, min(2.5, 0.5 * dmax))
    spot, dist = ground_spot(rng, cam_pos, yaw, hfov, dmin, dmax)
    shape = choose(rng, SHAPES, [0.32, 0.4, 0.28])
    # Half size grows with distance (so far objects stay visible) and stays below a third of
    # the distance (so near ones do not fill the view).
    s = min(math.exp(rng.uniform(math.log(0.12), math.log(1.2))) * max(1.0, dist / 8.0), dist / 3.0)
    rot = rot_z(rng.uniform(0, 360))
    if shape == "sphere":
        size = np.full(3, s)
        if rng.random() < 0.35:
            size = size * rng.uniform(0.5, 1.6, 3)
            rot = rot @ random_rotation(rng) if rng.random() < 0.5 else rot
    elif shape == "box":
        size = s * rng.uniform(0.35, 1.6, 3)
        if rng.random() < 0.2:
            rot = random_rotation(rng)
    else:
        r = s * rng.uniform(0.3, 1.0)
        size = np.array([r, r, s * rng.uniform(0.5, 2.0)])
        if rng.random() < 0.25:  # lying on its side
            rot = rot_z(rng.uniform(0, 360)) @ rot_x(90.0)
    half_h = _vertical_half_extent(shape, size, rot)
    z = half_h if rng.random() < 0.8 else half_h + rng.uniform(0.2, 2.5)
    center = spot + np.array([0.0, 0.0, z])
    radius = bounding_radius(shape, size)
    if not camera_clearance_ok(cam_pos, center, radius):
        return None
    return Primitive(shape=shape, center=tuple(center), size=tuple(float(x) for x in size),
                     rotation=rot, material=material_fn(rng))


def sample_synthetic(rng, seed, height, width) -> SceneSpec:
    """A synthetic-style scene of ``height`` x ``width`` pixels, drawn with ``rng`` (a :class:`~.sampling.Rand`)."""
    hfov = rng.uniform(40.0, 90.0)
    yaw = rng.uniform(0.0, 360.0)
    roll = float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
    indoor = rng.random() < 0.3
    objects: list[Primitive] = []
    if indoor:
        half = np.array([rng.uniform(2.0, 8.0), rng.uniform(2.0, 10.0), rng.uniform(1.2, 2.5)])
        room_yaw = rng.uniform(0.0, 360.0)
        rot = rot_z(room_yaw)
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
        walls.append((center, half, rot_z(yaw + rng.uniform(-25, 25))))
    if rng.random() < 0.25:  # a street canyon: walls left and right along the view
        for sgn in (-1.0, 1.0):
            half = np.array([rng.uniform(0.3, 1.0), rng.uniform(10.0, 40.0), rng.uniform(2.0, 12.0)])
            center = ground + side * sgn * rng.uniform(3.0, 12.0) + fwd * rng.uniform(half[1] * 0.6, half[1] * 1.2)
            walls.append((center, half, rot_z(yaw + rng.uniform(-5, 5))))
    for center, half, rot in walls:
        center[2] = half[2]
        if _clear_of_box(cam_pos, center, half, rot):
            objects.append(Primitive("box", tuple(center), tuple(half), rot, material_fn(rng)))
