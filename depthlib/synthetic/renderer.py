"""The renderer: a :class:`~.types.SceneSpec` ray-cast into a :class:`~.types.Scene`.

:func:`render` casts one primary ray per pixel centre, intersects it
analytically with the ground plane or the room and with every primitive
(vectorised over the pixels of the primitive's projected bounding box),
keeps the nearest hit, shades it (Lambertian, ambient or hemisphere
ambient, one hard shadow ray per pixel against the primitives, haze by ray
length, sky with sun glow and clouds) and, for the photo and street
styles, applies the camera film (exposure, tone shoulder, vignetting,
slight blur, sensor noise).

Conventions: rays are cast with world direction ``R K^-1 [j, i, 1]``, whose
camera-z component is 1, so the ray parameter of a hit *is* its planar
depth in metres (camera z), exact up to float32 rounding. Pixels that see
sky, or a surface farther than ``SceneSpec.max_depth``, get ``valid =
False`` and ``depth = 0``. Colour is float32 in 0..255 until the final
uint8 cast. The only randomness is the scene's own (texture offsets, film
noise), drawn from ``SceneSpec.seed``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys

import numpy as np

from depthlib.synthetic.geometry import box_interval, local_normal, occluded, ray_entry, rot_z
from depthlib.synthetic.textures import Footprint, Tex, grain_field, material_albedo
from depthlib.synthetic.types import Room, Scene, SceneSpec, Sky


_NEAR = 0.05  # metres: bounding hulls are clipped to camera z >= this before projecting


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
    tex = Tex(rng)
    objs = spec.objects
    placed = _place([p.shape for p in objs], [p.material for p in objs], [p.center for p in objs],
                    [p.size for p in objs], [p.rotation for p in objs])
    room = None
    if spec.room is not None:
        rm = spec.room
        room = _place(["box"], [None], [rm.center], [rm.size], [rot_z(rm.yaw_deg)])[0]

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
        _, tf = box_interval(*room.to_local_point(fr.o), *room.ldir)
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
        tn, ok = ray_entry(pl.shape, pl.lo, *pl.ldir)
        tb = fr.t[sl]
        take = (tn > 0.0) & (tn < tb)
        if ok is not None:
            take &= ok
        np.copyto(tb, tn, where=take)
        np.copyto(fr.id[sl], np.int16(k), where=take)


def _surfaces(fr: _Frame, spec: SceneSpec, room, placed, tex: Tex):
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
            fp = Footprint(lambda: tt * (fr.dx[sl] ** 2 + fr.dy[sl] ** 2 + dz * dz)
                            * np.float32(f_inv) / np.maximum(-dz, 0.02), oz * f_inv, math.inf)
            rgb = material_albedo(spec.ground, gx, gy, np.zeros_like(gx), fp, tex, salt=0)
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
        q = local_normal(pl.shape, p)
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
        fp = Footprint(footprint, max(dist - pl.radius, 0.0) * f_inv, 1.8 * (dist + pl.radius) * f_inv, scalar)
        p *= pl.size32  # object frame, metres
        rgb = material_albedo(pl.material, p[0], p[1], p[2], fp, tex, salt=k)
        np.copyto(normal[:, sl[0], sl[1]], wn, where=m)
        np.copyto(albedo[:, sl[0], sl[1]], rgb, where=m)
    return normal, albedo


def _room_surface(fr: _Frame, room_spec: Room, room: _Placed, normal, albedo, tex: Tex):
    lo = room.to_local_point(fr.o)
    p = room.ldir.copy()
    p *= fr.t
    p += np.asarray(lo, np.float32)[:, None, None]
    q = local_normal("box", p)
    # seen from inside: the normal points into the room
    np.negative((room.N32 @ q.reshape(3, -1)).reshape(q.shape), out=normal)
    faces = q[2]
    p *= room.size32
    t = fr.t

    def footprint():
        cosd = np.abs(np.einsum("ihw,ihw->hw", normal, fr.d))
        return t * np.einsum("ihw,ihw->hw", fr.d, fr.d) * np.float32(fr.f_inv) / np.maximum(cosd, 0.05)

    fp = Footprint(footprint, 0.0, 1.8 * 2.0 * math.hypot(*room.size) * fr.f_inv)
    albedo[:] = material_albedo(room_spec.walls, p[0], p[1], p[2], fp, tex, salt=1)
    for face, mat, salt in ((faces < 0.0, room_spec.floor, 2), (faces > 0.0, room_spec.ceiling, 3)):
        sl = _rows_of(face, fr.W)
        if sl is None:
            continue
        sub = Footprint(lambda sl=sl: fp.get()[sl], fp.lower, fp.upper)
        ps = p[:, sl[0], sl[1]]
        rgb = material_albedo(mat, ps[0], ps[1], ps[2], sub, tex, salt=salt)
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
        occ = occluded(pl.shape, lo[0], lo[1], lo[2], tuple(float(v) for v in pl.M @ L)).reshape(h, w)
        # A convex primitive cannot shadow its own lit side, so skip its own pixels.
        occ &= lit
        occ &= fr.id[sl] != k
        np.copyto(ndl[sl], np.float32(0.0), where=occ)


def _compose(fr: _Frame, spec: SceneSpec, normal, albedo, ndl, L, tex: Tex):
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


def _sky(fr: _Frame, sk: Sky, sl, L, tex: Tex):
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
    grain = grain_field().take(np.arange(oi, oi + H) % 512, axis=0).take(np.arange(oj, oj + W) % 512, axis=1)
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
