"""Shard rows -> training examples: targets, geometry kept aligned, augmentation, CutMix (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from depthlib.training.examples import (ExampleSpec, apply_cutmix, cutmix_box, make_example, placeholder_example,
                                        shorter_side_size, target_and_mask)


def _scene(h: int, w: int):
    """An image whose red channel encodes the column and green the row, and a
    depth map encoding both, so any misalignment between them is visible."""
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([cols * 255 // max(w - 1, 1), rows * 255 // max(h - 1, 1), np.full((h, w), 128)], -1)
    depth = 1.0 + rows + cols / 1000.0  # row = floor(d - 1), column = 1000 * frac(d - 1)
    return image.astype(np.uint8), depth.astype(np.float32), np.ones((h, w), bool)


def _decode_position(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.floor(target - 1.0 + 1e-4)
    return rows, np.round((target - 1.0 - rows) * 1000.0)


def test_shorter_side_size_keeps_aspect():
    assert shorter_side_size(100, 200, 50) == (50, 100)
    assert shorter_side_size(300, 150, 70) == (140, 70)
    assert shorter_side_size(70, 70, 70) == (70, 70)


def test_targets_per_stage():
    depth = np.array([[2.0, 0.0], [np.nan, 30.0]], np.float32)
    valid = np.array([[True, True], [True, False]])
    t, m = target_and_mask(depth, valid, ExampleSpec("inverse_depth", 14))
    np.testing.assert_allclose(t, [[0.5, 0.0], [0.0, 0.0]])
    assert m.tolist() == [[True, False], [False, False]]
    t, m = target_and_mask(depth, valid, ExampleSpec("metric_depth", 14, min_depth=1.0, max_depth=20.0))
    assert m.tolist() == [[True, False], [False, False]] and t[0, 0] == 2.0
    t, m = target_and_mask(depth, np.ones((2, 2), bool), ExampleSpec("disparity", 14))
    assert m.tolist() == [[True, True], [False, True]] and t[1, 1] == 30.0


@pytest.mark.parametrize("seed", range(4))
def test_crop_and_flip_keep_image_and_target_aligned(seed):
    image, depth, valid = _scene(56, 84)
    spec = ExampleSpec("metric_depth", 28, min_depth=0.5, max_depth=100.0)
    ex = make_example(image, depth, valid, spec, np.random.default_rng(seed))
    assert ex["image"].shape == (3, 28, 28) and ex["image"].dtype == np.uint8
    assert ex["target"].shape == ex["mask"].shape == (28, 28) and ex["mask"].all()
    # 56x84 -> shorter side 28 = half size; the target's row/col code must match the image's
    row_from_depth, col_from_depth = _decode_position(ex["target"])
    col_from_image = ex["image"][0].astype(float) / 255 * 83
    row_from_image = ex["image"][1].astype(float) / 255 * 55
    assert np.abs(col_from_image - col_from_depth).max() <= 3  # bicubic vs nearest: within a source pixel or two
    assert np.abs(row_from_image - row_from_depth).max() <= 3


def test_pseudo_label_resolution_differs_from_image():
    """A label at the teacher's resolution (here half the image) is matched by
    resizing the image to it first."""
    image, _, _ = _scene(112, 140)
    _, label, valid = _scene(56, 70)
    ex = make_example(image, label, valid, ExampleSpec("disparity", 56, flip=False), np.random.default_rng(0))
    rows, cols = _decode_position(ex["target"])
    assert np.abs(ex["image"][1].astype(float) / 255 * 55 - rows).max() <= 2
    assert np.abs(ex["image"][0].astype(float) / 255 * 69 - cols).max() <= 2


def test_flip_happens_about_half_the_time_and_mirrors_both():
    image, depth, valid = _scene(28, 28)
    spec = ExampleSpec("metric_depth", 28, min_depth=0.5, max_depth=100.0)
    flips = 0
    for seed in range(40):
        ex = make_example(image, depth, valid, spec, np.random.default_rng(seed))
        flipped = ex["target"][0, 0] > ex["target"][0, -1]
        assert flipped == (ex["image"][0, 0, 0] > ex["image"][0, 0, -1])
        flips += flipped
    assert 10 <= flips <= 30


def test_same_seed_same_example_and_colour_changes_only_the_image():
    image, depth, valid = _scene(42, 56)
    plain = ExampleSpec("inverse_depth", 28)
    strong = ExampleSpec("inverse_depth", 28, color_jitter=True, blur=True)
    a = make_example(image, depth, valid, plain, np.random.default_rng(5))
    b = make_example(image, depth, valid, plain, np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    changed = 0
    for seed in range(10):
        x = make_example(image, depth, valid, strong, np.random.default_rng(seed))
        y = make_example(image, depth, valid, plain, np.random.default_rng(seed))
        changed += not np.array_equal(x["image"], y["image"])
    assert changed >= 5


def test_cutmix_pastes_one_box_from_the_next_example_and_marks_it():
    rng = np.random.default_rng(1)
    crop = 28
    examples = []
    for value in (1, 2, 3):
        ex = placeholder_example(crop)
        ex["image"][:] = value
        ex["target"][:] = value
        ex["mask"][:] = True
        examples.append(ex)
    ok = [True, False, True]  # the placeholder is never a source nor a target
    apply_cutmix(examples, ok, rng, probability=1.0)
    a, b, c = examples
    assert (b["target"] == 2).all() and b["region"].sum() == 0
    for ex, src in ((a, 3), (c, 1)):
        box = ex["region"].astype(bool)
        assert 0 < box.sum() < crop * crop
        assert (ex["target"][box] == src).all() and (ex["image"][:, box] == src).all()
        assert (ex["target"][~box] == ex["image"][0][~box]).all()  # outside: the example's own values


def test_cutmix_box_area_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = cutmix_box(100, rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 100
        assert 0.01 * 100 * 100 <= h * w <= 0.5 * 100 * 100
