"""Analytic ray geometry of the primitives, in their canonical frames, and rotation matrices.

The canonical shapes are the unit sphere, the cube [-1, 1]^3 and the
cylinder of radius 1 with z in [-1, 1]. A primitive maps a world point p to
its canonical frame by ``M (p - center)`` with ``M = diag(1/size) R^T``;
that map is affine, so a ray keeps its parameter t, and one routine per
shape covers spheres and ellipsoids, cubes and oriented boxes, upright and
lying cylinders. The renderer's camera rays have camera-z component 1, so t
of a hit is its planar depth in metres.

Each interval routine takes the ray in the shape's canonical frame, origin
(ox, oy, oz) and direction (dx, dy, dz) as scalars or broadcastable float32
arrays, and returns the entry and exit parameters (tn, tf); the ray misses
where ``not (tn <= tf)`` (NaN included). Pure numpy, no state.
"""

from __future__ import annotations

import math

import numpy as np


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


def box_interval(ox, oy, oz, dx, dy, dz):
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


_INTERVAL = {"sphere": _sphere_interval, "box": box_interval, "cylinder": _cylinder_interval}


def ray_entry(shape, o, dx, dy, dz):
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


def occluded(shape, ox, oy, oz, d):
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


def local_normal(shape, p):
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


def rot_z(deg: float) -> np.ndarray:
    """Rotation by ``deg`` degrees about the z axis (counter-clockwise seen from +z), 3x3 float64."""
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    """Rotation by ``deg`` degrees about the x axis, 3x3 float64."""
    a = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
