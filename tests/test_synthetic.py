"""Synthetic scenes: exact depth against hand computations, determinism, variety, the Ray job.

Depth is checked against independent float64 geometry: a hit point is found
along the unit-length ray, then its camera-z coordinate is taken and the point
is projected back through K onto the pixel it came from.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from depthlib.synthetic import (
    STREET_RIG, STYLES, Camera, Light, Material, Primitive, Room, SceneSpec, encode_image, render, render_scene,
    sample_scene,
)


def _ray(cam: Camera, i: int, j: int):
    """World origin and unit direction of pixel (row i, col j), in float64."""
    K = np.asarray(cam.K, np.float64)
    pose = np.asarray(cam.camera_to_world, np.float64)
    d = pose[:3, :3] @ np.linalg.solve(K, [j, i, 1.0])
    return pose[:3, 3], d / np.linalg.norm(d)


def _planar_depth(cam: Camera, point, i: int, j: int) -> float:
    """Camera-z of a world point; asserts it projects back onto pixel (i, j)."""
    pose = np.asarray(cam.camera_to_world, np.float64)
    pc = pose[:3, :3].T @ (np.asarray(point) - pose[:3, 3])
    uvw = np.asarray(cam.K, np.float64) @ pc
    np.testing.assert_allclose(uvw[:2] / uvw[2], [j, i], atol=1e-6)
    return float(pc[2])


def _sphere_hit(o, d, c, r):
    oc = o - np.asarray(c, np.float64)
    b = float(oc @ d)
    disc = b * b - (float(oc @ oc) - r * r)
    return None if disc < 0 else -b - math.sqrt(disc)


# --------------------------------------------------------------------------- random scenes


@pytest.mark.parametrize("style", STYLES)
def test_shapes_dtypes_and_determinism(style):
    a = render_scene(11, 48, 64, style)
    b = render_scene(11, 48, 64, style)
    assert a.image.shape == (48, 64, 3) and a.image.dtype == np.uint8
    assert a.depth.shape == (48, 64) and a.depth.dtype == np.float32
    assert a.valid.shape == (48, 64) and a.valid.dtype == bool
    assert a.intrinsics.shape == (3, 3) and a.intrinsics.dtype == np.float32
    assert a.camera_to_world.shape == (4, 4)
    assert a.seed == 11 and a.style == style
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.valid, b.valid)


@pytest.mark.parametrize("style", STYLES)
def test_depth_positive_where_valid_zero_elsewhere(style):
    for seed in range(12):
        s = render_scene(seed, 64, 64, style)
        assert np.isfinite(s.depth).all()
        assert s.valid.any(), seed
        assert (s.depth[s.valid] > 0).all()
        assert (s.depth[~s.valid] == 0).all()
        assert s.depth.max() <= 100.0
        assert s.image.std() > 5.0, "image is (nearly) constant"


def test_variety_across_seeds():
    scenes = [render_scene(seed, 64, 64) for seed in range(8)]
    for a, b in zip(scenes, scenes[1:]):
        assert not np.array_equal(a.image, b.image)
        assert not np.array_equal(a.depth, b.depth)
    specs = [sample_scene(seed, 64, 64) for seed in range(30)]
    assert len({len(s.objects) for s in specs}) >= 5
    assert len({p.shape for s in specs for p in s.objects}) == 3
    assert len({p.material.pattern for s in specs for p in s.objects}) >= 5
    assert any(s.room is not None for s in specs) and any(s.room is None for s in specs)
    assert len({round(float(s.camera.K[0, 0]), 3) for s in specs}) == 30
    # Objects spread from arm's length to far away.
    dists = [np.linalg.norm(np.asarray(p.center[:2]) - s.camera.camera_to_world[:2, 3])
             for s in specs for p in s.objects]
    assert min(dists) < 2.0 and max(dists) > 30.0


@pytest.mark.parametrize("style", STYLES)
def test_camera_is_outside_every_primitive(style):
    for seed in range(150):
        spec = sample_scene(seed, 32, 32, style)
        o = np.asarray(spec.camera.camera_to_world)[:3, 3]
        for p in spec.objects:
            q = (np.asarray(p.rotation).T @ (o - np.asarray(p.center))) / np.asarray(p.size)
            inside = {"sphere": q @ q <= 1.0, "box": np.abs(q).max() <= 1.0,
                      "cylinder": q[0] ** 2 + q[1] ** 2 <= 1.0 and abs(q[2]) <= 1.0}[p.shape]
            assert not inside, (seed, p)
        if spec.room is not None:
            R = np.array([[math.cos(math.radians(spec.room.yaw_deg)), -math.sin(math.radians(spec.room.yaw_deg)), 0],
                          [math.sin(math.radians(spec.room.yaw_deg)), math.cos(math.radians(spec.room.yaw_deg)), 0],
                          [0, 0, 1]])
            q = (R.T @ (o - np.asarray(spec.room.center))) / np.asarray(spec.room.size)
            assert np.abs(q).max() < 1.0, seed  # inside the room


def test_photo_style_differs_from_synthetic():
    def stats(style):
        imgs = np.stack([render_scene(seed, 64, 64, style).image for seed in range(12)]).astype(np.float32)
        sat = (imgs.max(-1) - imgs.min(-1)) / (imgs.max(-1) + 1.0)
        # pixel-to-pixel roughness in flat areas: sensor noise in photos, none in synthetic
        rough = np.median(np.abs(np.diff(imgs.mean(-1), axis=2)))
        return sat.mean(), rough

    sat_syn, rough_syn = stats("synthetic")
    sat_photo, rough_photo = stats("photo")
    assert sat_photo < 0.8 * sat_syn
    assert rough_photo > rough_syn


def test_street_scenes_share_one_camera_rig():
    """Metric scale is in a street image: same intrinsics, camera 1.6 m above the road, near level;
    the road in the bottom rows is at the depth that rig puts it."""
    on_road = total = 0
    for seed in range(30):
        spec = sample_scene(seed, 40, 56, "street")
        np.testing.assert_allclose(spec.camera.K, Camera.from_angles(40, 56, hfov_deg=STREET_RIG["hfov_deg"]).K)
        pose = np.asarray(spec.camera.camera_to_world, np.float64)
        assert abs(pose[2, 3] - STREET_RIG["height_m"]) <= 0.05
        pitch = math.degrees(math.asin(pose[2, 2]))  # optical axis above the horizontal
        assert STREET_RIG["pitch_deg"][0] - 0.1 <= pitch <= STREET_RIG["pitch_deg"][1] + 0.1
        scene = render(spec)
        for i in (38, 39):
            for j in range(0, 56, 5):
                d = pose[:3, :3] @ np.linalg.solve(np.asarray(spec.camera.K, np.float64), [j, i, 1.0])
                road = -pose[2, 3] / d[2]  # planar depth of the ground under this pixel
                total += 1
                on_road += bool(scene.valid[i, j] and abs(scene.depth[i, j] - road) < 1e-4 * road)
    assert on_road > 0.8 * total


def test_photo_sky_is_painted_but_invalid():
    for seed in range(20):
        s = render_scene(seed, 64, 64, "photo")
        sky = ~s.valid & (s.image[..., 2].astype(int) > s.image[..., 0].astype(int))
        if sky.sum() > 50:
            assert s.image[~s.valid].std() > 2.0
            return
    pytest.fail("no photo scene with visible sky among 20 seeds")


# --------------------------------------------------------------------------- hand-made scenes: exact depth


def _spec(cam, objects=(), ground=None, **kw):
    return SceneSpec(camera=cam, objects=list(objects), ground=ground, **kw)


def test_ground_plane_depth_matches_hand_computation():
    cam = Camera.from_angles(60, 80, hfov_deg=70.0, position=(1.0, -2.0, 1.7), yaw_deg=30.0,
                             pitch_deg=-20.0, roll_deg=5.0)
    s = render(_spec(cam, ground=Material(pattern="checker"), max_depth=50.0))
    checked = 0
    for i in range(0, 60, 7):
        for j in range(0, 80, 9):
            o, d = _ray(cam, i, j)
            if d[2] >= 0:
                assert not s.valid[i, j] and s.depth[i, j] == 0.0
                continue
            dist = -o[2] / d[2]
            z = _planar_depth(cam, o + dist * d, i, j)
            if z > 50.0:
                assert not s.valid[i, j] and s.depth[i, j] == 0.0
            else:
                assert s.valid[i, j]
                assert s.depth[i, j] == pytest.approx(z, rel=2e-6)
                checked += 1
    assert checked > 20
    assert (~s.valid).any()  # sky above the horizon


@pytest.mark.parametrize("distance,radius", [(10.0, 2.0), (50.0, 0.3), (1.0, 0.4)])
def test_sphere_straight_ahead(distance, radius):
    # Odd image size: the centre pixel's ray is the optical axis (+y in the world).
    cam = Camera.from_angles(65, 65, hfov_deg=60.0, position=(0.0, 0.0, 1.5))
    c = (0.0, distance, 1.5)
    s = render(_spec(cam, [Primitive("sphere", c, (radius,) * 3)]))
    assert s.depth[32, 32] == pytest.approx(distance - radius, rel=1e-6)
    assert not s.valid[0, 0] and s.depth[0, 0] == 0.0  # nothing but the sphere in the scene
    for i, j in [(30, 33), (28, 36), (32, 20), (40, 32)]:
        o, d = _ray(cam, i, j)
        t = _sphere_hit(o, d, c, radius)
        if t is None:
            assert not s.valid[i, j]
        else:
            assert s.valid[i, j]
            assert s.depth[i, j] == pytest.approx(_planar_depth(cam, o + t * d, i, j), rel=2e-6)


def test_boxes_and_cylinders_straight_ahead():
    cam = Camera.from_angles(65, 65, hfov_deg=60.0, position=(0.0, 0.0, 1.5))
    yaw45 = np.array([[math.cos(math.pi / 4), -math.sin(math.pi / 4), 0], [math.sin(math.pi / 4), math.cos(math.pi / 4), 0],
                      [0, 0, 1]])
    lying = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float)  # cylinder axis along world x
    cases = [
        (Primitive("box", (0, 10, 1.5), (1.0, 0.5, 1.0)), 9.5),
        (Primitive("box", (0, 10, 1.5), (1.0, 1.0, 1.0), yaw45), 10.0 - math.sqrt(2.0)),  # a vertical edge
        (Primitive("cylinder", (0, 10, 1.5), (1.0, 1.0, 1.0)), 9.0),
        (Primitive("cylinder", (0, 10, 1.5), (0.5, 0.5, 2.0), lying), 9.5),
        (Primitive("sphere", (0, 10, 1.5), (2.0, 0.5, 1.0)), 9.5),  # ellipsoid
    ]
    for prim, expected in cases:
        s = render(_spec(cam, [prim]))
        assert s.valid[32, 32]
        assert s.depth[32, 32] == pytest.approx(expected, rel=1e-6), prim


def test_box_face_depth_off_axis_and_nearest_hit_wins():
    cam = Camera.from_angles(65, 65, hfov_deg=60.0, position=(0.0, 0.0, 1.5), yaw_deg=10.0, pitch_deg=-5.0)
    box = Primitive("box", (0.5, 12, 1.0), (3.0, 0.5, 2.0))    # front face at world y = 11.5
    ball = Primitive("sphere", (0.0, 6, 1.2), (0.6,) * 3)
    s = render(_spec(cam, [box, ball], ground=Material()))
    hits = {"box": 0, "ball": 0}
    for i in range(0, 65, 4):
        for j in range(0, 65, 4):
            o, d = _ray(cam, i, j)
            cands = []
            if d[1] > 0:
                t = (11.5 - o[1]) / d[1]
                p = o + t * d
                if abs(p[0] - 0.5) <= 3.0 and -1.0 <= p[2] <= 3.0:
                    cands.append((t, "box"))
            tb = _sphere_hit(o, d, ball.center, 0.6)
            if tb is not None and tb > 0:
                cands.append((tb, "ball"))
            if d[2] < 0:
                cands.append((-o[2] / d[2], "ground"))
            if not cands:
                continue
            t, what = min(cands)
            # skip pixels within a hair of a silhouette, where float32 may pick the other surface
            if len(cands) > 1 and sorted(cands)[1][0] - t < 1e-3:
                continue
            if what in hits:
                hits[what] += 1
            z = _planar_depth(cam, o + t * d, i, j)
            if z > 80.0:  # the default max_depth: far ground is background
                assert not s.valid[i, j] and s.depth[i, j] == 0.0
            else:
                assert s.depth[i, j] == pytest.approx(z, rel=2e-6), (i, j, what)
    assert hits["box"] > 10 and hits["ball"] > 3


def test_room_interior_is_all_valid_and_exact():
    cam = Camera.from_angles(33, 33, hfov_deg=80.0, position=(0.5, -1.0, 1.4), yaw_deg=0.0)
    room = Room(center=(0.0, 0.0, 1.5), size=(3.0, 4.0, 1.5))   # back wall at y = 4
    s = render(_spec(cam, room=room, max_depth=50.0))
    assert s.valid.all()
    assert s.depth[16, 16] == pytest.approx(5.0, rel=1e-6)
    o, d = _ray(cam, 0, 0)  # top-left corner ray: left wall, ceiling or back wall, whichever is first
    ts = [t for t in ((-3.0 - o[0]) / d[0], (3.0 - o[2]) / d[2], (4.0 - o[1]) / d[1]) if t > 0]
    assert s.depth[0, 0] == pytest.approx(_planar_depth(cam, o + min(ts) * d, 0, 0), rel=2e-6)


def test_shadow_darkens_the_ground_behind_a_box():
    cam = Camera.from_angles(65, 65, hfov_deg=70.0, position=(0.0, 0.0, 6.0), pitch_deg=-60.0)
    L = np.array([-0.5, 0.0, math.sqrt(0.75)])  # light from -x, 60 deg high
    box = Primitive("box", (0.0, 4.0, 0.5), (0.5, 0.5, 0.5), material=Material(color=(0.5, 0.5, 0.5)))
    spec = _spec(cam, [box], ground=Material(color=(0.8, 0.8, 0.8)),
                 light=Light(direction=tuple(L), color=(0.7, 0.7, 0.7), ambient=(0.2, 0.2, 0.2)))
    s = render(spec)

    def pixel(p):
        pose = np.asarray(cam.camera_to_world)
        uvw = np.asarray(cam.K) @ (pose[:3, :3].T @ (np.asarray(p) - pose[:3, 3]))
        return int(round(uvw[1] / uvw[2])), int(round(uvw[0] / uvw[2]))

    # (0.8, 4, 0): its ray towards the light enters the box at x = 0.5, z = 0.52; the camera
    # sees it past the box's side. (-2.5, 4, 0) is open ground on the lit side.
    (i0, j0), (i1, j1) = pixel((0.8, 4.0, 0.0)), pixel((-2.5, 4.0, 0.0))
    assert s.valid[i0, j0] and s.valid[i1, j1]
    ambient_only, lit = 0.8 * 0.2 * 255, 0.8 * (0.2 + 0.7 * L[2]) * 255
    assert s.image[i0, j0].mean() == pytest.approx(ambient_only, abs=1.0)
    assert s.image[i1, j1].mean() == pytest.approx(lit, abs=1.0)


def test_encode_image_round_trip():
    from PIL import Image
    import io

    img = render_scene(3, 40, 56).image
    png = encode_image(img, "png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), img)
    jpg = encode_image(img, "jpeg", quality=90)
    back = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(int)
    assert jpg[:2] == b"\xff\xd8" and back.shape == img.shape
    assert np.abs(back - img).mean() < 8
    with pytest.raises(ValueError):
        encode_image(img, "gif")


def test_bad_arguments():
    with pytest.raises(ValueError):
        render_scene(0, 32, 32, style="cartoon")
    with pytest.raises(ValueError):
        render_scene(0, 0, 32)


# --------------------------------------------------------------------------- the Ray job


def test_config_parsing_and_validation():
    from depthlib.cli import parse_config
    from depthlib.synthetic_job import MakeSyntheticConfig

    cfg = parse_config(MakeSyntheticConfig, ["--output", "/tmp/x", "--count", "5", "--size", "64x32",
                                             "--seed", "2", "--style", "photo", "--format", "images",
                                             "--scenes-per-task", "2", "--shard-target-mb", "8"])
    assert (cfg.height, cfg.width, cfg.count, cfg.seed) == (64, 32, 5, 2)
    assert cfg.image_format == "jpeg"  # photo default
    assert cfg.num_tasks == 3 and list(cfg.task_range(2)) == [4]
    assert MakeSyntheticConfig(output="x", count=1).image_format == "png"
    for bad in ({"size": "64"}, {"size": "0x10"}, {"count": 0}, {"scenes_per_task": 0},
                {"shard_target_mb": 0.0}, {"seed": -1}, {"jpeg_quality": 0}):
        with pytest.raises(ValueError):
            MakeSyntheticConfig(output="x", **bad)


def _shard_rows(out):
    from depthlib import shards, storage

    paths = shards.list_shards(storage.join(out, "shards"))
    return paths, [r for p in paths for r in shards.read_shard(p).to_pylist()]


def test_job_writes_shards_that_decode_to_the_rendered_scenes_and_resumes(ray_session, tmp_path):
    import os

    from depthlib import shards, storage
    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic, scene_seed

    out = str(tmp_path / "syn")
    cfg = MakeSyntheticConfig(output=out, count=8, size="40x56", seed=3, format="shards",
                              scenes_per_task=3, shard_target_mb=0.004)  # ~2 scenes per shard
    first = make_synthetic(cfg, progress=False)
    assert (first["tasks"], first["tasks_skipped"], first["scenes_rendered"]) == (3, 0, 8)
    assert json.loads(storage.read_bytes(storage.join(out, "summary.json")))["count"] == 8
    paths, rows = _shard_rows(out)
    assert len(paths) >= 4 and all(os.path.basename(p).startswith("shard-t") for p in paths)
    assert sorted(r["key"] for r in rows) == [f"{i:08d}" for i in range(8)]
    for row in rows:
        sample = shards.decode_sample(row)
        scene = render_scene(scene_seed(3, int(sample.key)), 40, 56)
        np.testing.assert_array_equal(sample.image, scene.image)  # PNG is lossless
        np.testing.assert_array_equal(sample.valid, scene.valid)
        v = scene.valid
        np.testing.assert_allclose(sample.depth[v], scene.depth[v], rtol=1e-4)
        assert (sample.depth[~v] == 0).all()
        assert sample.depth_type == "metric_depth" and sample.kind == "synthetic"
        assert sample.provenance["seed"] == scene_seed(3, int(sample.key))
        assert sample.provenance["style"] == "synthetic"
        assert sample.provenance["generator"] == "depthlib.synthetic"

    # A crash in task 1 after its first shard: marker and later shard gone.
    t1 = sorted(p for p in paths if "shard-t00001-" in p)
    storage.delete(storage.join(out, "_tasks", "t00001.json"))
    storage.delete(t1[-1])
    others = {p: os.stat(storage.local_path(p)).st_mtime_ns for p in paths if p not in t1}
    second = make_synthetic(cfg, progress=False)
    assert (second["tasks_skipped"], second["scenes_rendered"]) == (2, 3)
    paths2, rows2 = _shard_rows(out)
    assert paths2 == paths
    assert sorted(r["key"] for r in rows2) == [f"{i:08d}" for i in range(8)]  # no duplicates
    assert {p: os.stat(storage.local_path(p)).st_mtime_ns for p in others} == others  # untouched

    third = make_synthetic(cfg, progress=False)
    assert (third["tasks_skipped"], third["scenes_rendered"]) == (3, 0)
    with pytest.raises(ValueError, match="other settings"):
        make_synthetic(MakeSyntheticConfig(output=out, count=9, size="40x56", seed=3, scenes_per_task=3),
                       progress=False)


def test_job_images_format_and_cli(ray_session, tmp_path):
    from PIL import Image

    from depthlib import storage
    from depthlib.synthetic_job import scene_seed

    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_synthetic_script", Path(__file__).resolve().parents[1] / "ray_jobs" / "make_synthetic.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    out = str(tmp_path / "photos")
    argv = ["--output", out, "--count", "8", "--size", "36x52", "--seed", "5", "--style", "photo",
            "--format", "images", "--scenes-per-task", "4"]
    summary = script.main(argv)
    assert (summary["scenes_rendered"], summary["image_format"]) == (8, "jpeg")
    objs = list(storage.list_objects(out))
    images = [o for o in objs if o.key.startswith("images/")]
    assert sorted(o.key for o in images) == [f"images/{i:08d}.jpg" for i in range(8)]
    assert not any(o.key.startswith("shards/") for o in objs)  # images only: no labels
    img = np.asarray(Image.open(storage.local_path(images[3].uri)).convert("RGB"))
    ref = render_scene(scene_seed(5, 3), 36, 52, "photo").image
    assert img.shape == ref.shape and np.abs(img.astype(int) - ref).mean() < 8  # JPEG of that scene
    again = script.main(argv)
    assert (again["tasks_skipped"], again["scenes_rendered"]) == (2, 0)
    assert len([o for o in storage.list_objects(out) if o.key.startswith("images/")]) == 8
