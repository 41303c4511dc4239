"""The scoring protocol shared by evaluation and training's validation (pure tensors, no Ray).

Pinned: the meaning training relies on (``Protocol(min, max, "disparity" | "none")``,
``score`` per image, ``valid_pixels``, ``mean_scores``), the depth-space
alignment, the crops in pixels, and DA-2K pair scoring for both kinds of model.
"""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from depthlib.evaluation.protocol import (Protocol, crop_box, crop_mask, kitti_benchmark_crop, mean_scores,
                                          pairs_correct, predicted_depth, score, score_and_depth, valid_pixels)
from depthlib.metrics import METRIC_NAMES, depth_metrics, evaluate_relative


def scene(b=2, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = 0.5 + 9 * torch.rand(b, h, w, generator=g)
    mask = torch.rand(b, h, w, generator=g) > 0.2
    return depth, mask


def test_protocol_keeps_the_training_signature():
    p = Protocol(0.1, 10.0)
    assert (p.alignment, p.crop) == ("disparity", None)
    assert Protocol(0.1, 10.0, "none").to_dict() == {"min_depth": 0.1, "max_depth": 10.0, "alignment": "none",
                                                     "crop": None}
    for bad in (dict(min_depth=1, max_depth=1), dict(min_depth=-1, max_depth=1),
                dict(min_depth=0, max_depth=1, alignment="median"), dict(min_depth=0, max_depth=1, crop="eigen")):
        with pytest.raises(ValueError):
            Protocol(**bad)


def test_disparity_score_is_the_zero_shot_protocol_of_metrics():
    depth, mask = scene()
    pred = torch.rand(depth.shape, generator=torch.Generator().manual_seed(1))
    p = Protocol(0.6, 8.0)
    assert_close(score(pred, depth, mask, p), evaluate_relative(pred, depth, mask, 0.6, 8.0))
    assert set(score(pred, depth, mask, p)) == set(METRIC_NAMES)
    assert score(pred[0], depth[0], mask[0], p)["abs_rel"].shape == ()


def test_disparity_alignment_is_exact_for_any_scale_and_shift():
    depth, mask = scene()
    for a, b in ((3.0, 0.7), (-2.0, 5.0), (1e-3, -4.0)):
        m = score(a / depth.double() + b, depth, mask, Protocol(1e-3, 10.0))  # float64: 1e-3 beside 4 needs it
        assert float(m["abs_rel"].max()) < 1e-5
        assert m["d1"].tolist() == [1.0, 1.0]


def test_depth_alignment_fits_inverted_disparity_in_depth_space():
    depth, mask = scene()
    p = Protocol(1e-3, 10.0, "depth")
    m = score(4.0 / depth, depth, mask, p)  # pure scale: 1/pred is depth up to scale
    assert float(m["abs_rel"].max()) < 1e-5 and m["d1"].tolist() == [1.0, 1.0]
    # A disparity shift is not a depth shift: this space is not invariant to it.
    shifted = score(4.0 / depth + 1.0, depth, mask, p)["abs_rel"]
    assert float(shifted.min()) > 1e-3
    # By hand: an affine depth prediction is fitted exactly, then clamped to the range.
    gt = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    pred_depth = 2 * gt + 1
    d = predicted_depth(1.0 / pred_depth, gt, torch.ones_like(gt, dtype=torch.bool), Protocol(0.0, 5.0, "depth"))
    assert_close(d, torch.tensor([[1.0, 2.0, 4.0, 5.0]]))
    # Zero disparity is infinitely far: max_depth, and it stays out of the fit.
    pred = torch.tensor([[1.0, 0.5, 0.25, 0.0]])
    d = predicted_depth(pred, gt, torch.ones_like(gt, dtype=torch.bool), Protocol(0.0, 6.0, "depth"))
    assert_close(d, torch.tensor([[1.0, 2.0, 4.0, 6.0]]))


def test_metric_scores_metres_unaligned_and_clamped():
    depth, mask = scene()
    m = score(1.1 * depth, depth, mask, Protocol(1e-3, 20.0, "none"))
    assert_close(m["abs_rel"], torch.full((2,), 0.1), atol=1e-6, rtol=0)
    assert m["d1"].tolist() == [1.0, 1.0]
    # Beyond the range: clamped to max_depth before scoring.
    gt = torch.tensor([[2.0, 4.0]])
    m = score(torch.tensor([[100.0, 4.0]]), gt, torch.ones_like(gt, dtype=torch.bool), Protocol(0.0, 5.0, "none"))
    assert_close(m["abs_rel"], torch.tensor((5.0 - 2.0) / 2.0 / 2))  # H x W in, 0-dim out


def test_score_measures_predicted_depth_over_valid_pixels():
    depth, mask = scene(seed=3)
    pred = torch.rand(depth.shape, generator=torch.Generator().manual_seed(4)) + 0.1
    for p in (Protocol(0.8, 7.0), Protocol(0.8, 7.0, "depth"), Protocol(0.8, 7.0, "none")):
        valid = valid_pixels(depth, mask, p)
        assert_close(score(pred, depth, mask, p), depth_metrics(predicted_depth(pred, depth, mask, p), depth, valid))
        metrics, measured = score_and_depth(pred[0], depth[0], mask[0], p)
        assert_close(measured, predicted_depth(pred, depth, mask, p)[0])
        assert_close(metrics, {k: v[0] for k, v in score(pred, depth, mask, p).items()})


def test_non_finite_ground_truth_is_invalid_not_nan():
    depth, mask = scene()
    depth[0, :3] = math.inf
    depth[1, :3] = math.nan
    m = score(1.0 / torch.nan_to_num(depth, posinf=1.0, nan=1.0), depth, mask, Protocol(1e-3, 10.0))
    assert all(torch.isfinite(v).all() for v in m.values())
    assert float(m["abs_rel"].max()) < 1e-5


def test_no_valid_pixel_raises():
    depth, mask = scene(b=1)
    with pytest.raises(ValueError, match="no valid pixel"):
        score(1.0 / depth, depth * 100, mask, Protocol(1e-3, 10.0))


def test_mean_scores_is_the_mean_over_images_not_pixels():
    gt = torch.ones(2, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0] = True  # 16 pixels, error 0.5
    mask[1, 0, 0] = True  # 1 pixel, error 0.1
    pred = torch.stack([torch.full((4, 4), 1.5), torch.full((4, 4), 1.1)])
    per = score(pred, gt, mask, Protocol(0.0, 10.0, "none"))
    assert mean_scores([per])["abs_rel"] == pytest.approx(0.3)
    assert mean_scores([{k: v[:1] for k, v in per.items()}, {k: v[1:] for k, v in per.items()}]) == \
        pytest.approx(mean_scores([per]))
    assert mean_scores([]) == {}


def test_crops_in_pixels():
    assert crop_box("eigen_nyu", 480, 640) == (45, 471, 41, 601)
    # int(0.3324324*352)=117, int(0.91351351*352)=321, int(0.0359477*1216)=43, int(0.96405229*1216)=1172
    assert crop_box("eigen_kitti", 352, 1216) == (117, 321, 43, 1172)
    # int(0.40810811*352)=143, int(0.99189189*352)=349
    assert crop_box("garg_kitti", 352, 1216) == (143, 349, 43, 1172)
    m = crop_mask("eigen_nyu", 480, 640)
    assert int(m.sum()) == 426 * 560 and bool(m[45, 41]) and not bool(m[44, 41]) and not bool(m[45, 601])
    assert bool(crop_mask(None, 3, 4).all())
    with pytest.raises(ValueError, match="480x640"):
        crop_box("eigen_nyu", 240, 320)
    assert kitti_benchmark_crop(375, 1242) == (23, 13, 352, 1216)
    with pytest.raises(ValueError, match="352x1216"):
        kitti_benchmark_crop(300, 1242)


def test_valid_pixels_applies_range_mask_and_crop():
    gt = torch.linspace(1.0, 9.0, 640).expand(1, 480, 640).clone()
    gt[0, 100, 100] = 20.0  # out of NYU's range
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, 200, 200] = False
    v = valid_pixels(gt, mask, Protocol(1e-3, 10.0, crop="eigen_nyu"))
    assert int(v.sum()) == 426 * 560 - 2
    # Outside the crop the prediction can be anything.
    pred = 1.0 / gt.clone()
    pred[0, :45] = 1e4
    assert float(score(pred, gt, mask, Protocol(1e-3, 10.0, crop="eigen_nyu"))["abs_rel"]) < 1e-6
    assert float(score(pred, gt, mask, Protocol(1e-3, 10.0))["abs_rel"]) > 1e-2


def test_da2k_pairs_for_disparity_and_metric_predictions():
    disparity = np.array([[4.0, 1.0], [2.0, 2.0]])
    pairs = [{"point1": [0, 0], "point2": [0, 1], "closer_point": "point1"},  # right
             {"point1": [0, 1], "point2": [1, 0], "closer_point": "point1"},  # wrong
             {"point1": [1, 0], "point2": [1, 1], "closer_point": "point2"}]  # tie: wrong
    assert pairs_correct(disparity, pairs) == 1
    depth = 1.0 / disparity
    assert pairs_correct(depth, pairs, metric=True) == 1
    assert pairs_correct(torch.from_numpy(depth), pairs[:1], metric=True) == 1
    assert pairs_correct(disparity, []) == 0
    with pytest.raises(ValueError, match="img.png.*outside"):
        pairs_correct(disparity, [{"point1": [5, 0], "point2": [0, 0], "closer_point": "point1"}], image="img.png")
