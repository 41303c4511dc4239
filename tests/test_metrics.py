"""Tests for depthlib.metrics: alignment, depth metrics, zero-shot protocol, DA-2K.

Known values are worked out by hand on tiny tensors; random cases are checked
against straightforward numpy re-implementations of the published formulas.
"""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from depthlib.metrics import align_scale_shift, depth_metrics, evaluate_relative, pair_accuracy

KEYS = {"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3"}


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def ones_mask(x):
    return torch.ones_like(x, dtype=torch.bool)


def np_lstsq(p, g):
    a = np.stack([p, np.ones_like(p)], axis=1)
    (s, b), *_ = np.linalg.lstsq(a, g, rcond=None)
    return s, b


def np_eval_depth(p, g):
    """The official eval_depth formulas on 1-D arrays of valid pixels."""
    thresh = np.maximum(g / p, p / g)
    diff = p - g
    dlog = np.log(p) - np.log(g)
    return {
        "d1": np.mean(thresh < 1.25), "d2": np.mean(thresh < 1.25 ** 2),
        "d3": np.mean(thresh < 1.25 ** 3),
        "abs_rel": np.mean(np.abs(diff) / g), "sq_rel": np.mean(diff ** 2 / g),
        "rmse": np.sqrt(np.mean(diff ** 2)), "rmse_log": np.sqrt(np.mean(dlog ** 2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
        "silog": np.sqrt(np.mean(dlog ** 2) - 0.5 * np.mean(dlog) ** 2),
    }


# ---------------------------------------------------------------- alignment

def test_align_exact_affine():
    p = t([[[0.0, 1.0], [2.0, 3.0]]])
    s, b = align_scale_shift(p, 2 * p + 1, ones_mask(p))
    assert s.shape == (1,) and b.shape == (1,)
    assert_close(s, t([2.0]))
    assert_close(b, t([1.0]))


def test_align_least_squares_by_hand():
    # mean p = mean g = 1, cov = 1/3, var p = 2/3 -> scale 1/2, shift 1/2
    s, b = align_scale_shift(t([[[0.0, 1.0, 2.0]]]), t([[[0.0, 2.0, 1.0]]]),
                             ones_mask(t([[[0.0, 0.0, 0.0]]])))
    assert_close(s, t([0.5]))
    assert_close(b, t([0.5]))


def test_align_hw_input_and_per_image_batch():
    p = t([[0.0, 1.0], [2.0, 3.0]])
    s, b = align_scale_shift(p, -3 * p + 4, ones_mask(p))
    assert s.dim() == 0 and b.dim() == 0
    assert_close(s, t(-3.0))
    assert_close(b, t(4.0))
    batch = torch.stack([p, p])
    tgt = torch.stack([2 * p, 5 * p - 1])
    s, b = align_scale_shift(batch, tgt, ones_mask(batch))
    assert_close(s, t([2.0, 5.0]))
    assert_close(b, t([0.0, -1.0]))


def test_align_matches_numpy_lstsq_with_mask():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 5, 7, generator=g)
    tgt = torch.rand(3, 5, 7, generator=g) + 0.5 * p
    mask = torch.rand(3, 5, 7, generator=g) > 0.3
    s, b = align_scale_shift(p, tgt, mask)
    for i in range(3):
        m = mask[i].numpy()
        es, eb = np_lstsq(p[i].numpy()[m].astype(np.float64), tgt[i].numpy()[m].astype(np.float64))
        assert_close(s[i], t(es), rtol=1e-5, atol=1e-6)
        assert_close(b[i], t(eb), rtol=1e-5, atol=1e-6)


def test_align_ignores_masked_values_even_nan():
    p = t([[[0.0, 1.0], [2.0, 3.0]]])
    mask = t([[[True, True], [True, False]]], torch.bool)
    s0, b0 = align_scale_shift(p, 2 * p + 1, mask)
    p2, t2 = p.clone(), 2 * p + 1
    p2[0, 1, 1], t2[0, 1, 1] = float("nan"), float("inf")
    s1, b1 = align_scale_shift(p2, t2, mask)
    assert_close((s1, b1), (s0, b0))
    assert_close(s1, t([2.0]))


def test_align_is_stable_with_large_offset():
    # A naive float32 normal-equation solve loses the slope here.
    p = (1000.0 + torch.linspace(0, 1, 50)).reshape(1, 5, 10)
    tgt = 3.0 * (p.double() - 1000.0) + 0.25
    s, b = align_scale_shift(p, tgt.float(), ones_mask(p))
    es, eb = np_lstsq(p.double().numpy().ravel(), tgt.float().double().numpy().ravel())
    assert_close(s, t([es]), rtol=1e-5, atol=0)
    assert_close(b, t([eb]), rtol=1e-5, atol=0)


def test_align_degenerate_cases_are_finite():
    p = torch.stack([
        torch.full((2, 2), 3.0),                  # constant prediction
        t([[1.0, 2.0], [3.0, 4.0]]),              # one valid pixel
        t([[1.0, 2.0], [3.0, 4.0]]),              # no valid pixel
    ]).requires_grad_()
    tgt = t([[[1.0, 2.0], [3.0, 6.0]], [[5.0, 7.0], [7.0, 7.0]], [[1.0, 1.0], [1.0, 1.0]]])
    mask = torch.stack([torch.ones(2, 2, dtype=torch.bool),
                        t([[False, True], [False, False]], torch.bool),
                        torch.zeros(2, 2, dtype=torch.bool)])
    s, b = align_scale_shift(p, tgt, mask)
    # constant -> scale 0, shift = mean target; one pixel -> exact fit; empty -> identity
    assert_close(s, t([0.0, 0.0, 1.0]))
    assert_close(b, t([3.0, 7.0, 0.0]))
    (s.sum() + b.sum()).backward()
    assert torch.isfinite(p.grad).all()


def test_align_float64_input_keeps_float64():
    p = torch.arange(4, dtype=torch.float64).reshape(1, 2, 2)
    s, b = align_scale_shift(p, 7 * p - 2, ones_mask(p))
    assert s.dtype == torch.float64
    assert_close(s, torch.tensor([7.0], dtype=torch.float64))


def test_align_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        align_scale_shift(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), torch.ones(1, 2, 2, dtype=torch.bool))


# ---------------------------------------------------------------- depth_metrics

def test_depth_metrics_by_hand():
    pred, gt = t([[[1.0, 2.0, 3.0]]]), t([[[2.0, 2.0, 2.0]]])
    m = depth_metrics(pred, gt, ones_mask(pred))
    assert set(m) == KEYS
    ln2, ln15 = math.log(2), math.log(1.5)
    d = [-ln2, 0.0, ln15]
    mean_d2 = sum(x * x for x in d) / 3
    expected = {
        "abs_rel": (0.5 + 0 + 0.5) / 3,
        "sq_rel": (0.5 + 0 + 0.5) / 3,
        "rmse": math.sqrt(2 / 3),
        "rmse_log": math.sqrt(mean_d2),
        "log10": (math.log10(2) + math.log10(1.5)) / 3,
        "silog": math.sqrt(mean_d2 - 0.5 * (sum(d) / 3) ** 2),
        "d1": 1 / 3,   # ratios 2, 1, 1.5
        "d2": 2 / 3,   # 1.5 < 1.5625 but 2 is not
        "d3": 2 / 3,   # 2 > 1.953125
    }
    for k, v in expected.items():
        assert_close(m[k], t([v]), msg=k)


def test_depth_metrics_perfect_prediction():
    gt = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    m = depth_metrics(gt.clone(), gt, ones_mask(gt))
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
        assert_close(m[k], torch.zeros(2), msg=k, atol=1e-6, rtol=0)
    for k in ("d1", "d2", "d3"):
        assert_close(m[k], torch.ones(2), msg=k)


@pytest.mark.parametrize("reduction", ["per_image", "pooled"])
def test_depth_metrics_match_numpy_reference(reduction):
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(3, 6, 8, generator=g) * 20 + 0.5
    pred = gt * torch.exp(torch.randn(3, 6, 8, generator=g) * 0.3)
    mask = torch.rand(3, 6, 8, generator=g) > 0.4
    m = depth_metrics(pred, gt, mask, reduction=reduction)
    p64, g64, mk = pred.double().numpy(), gt.double().numpy(), mask.numpy()
    if reduction == "pooled":
        ref = np_eval_depth(p64[mk], g64[mk])
        for k in KEYS:
            assert m[k].shape == ()
            assert_close(m[k], t(ref[k]), msg=k, rtol=1e-5, atol=1e-6)
    else:
        refs = [np_eval_depth(p64[i][mk[i]], g64[i][mk[i]]) for i in range(3)]
        for k in KEYS:
            assert_close(m[k], t([r[k] for r in refs]), msg=k, rtol=1e-5, atol=1e-6)


def test_depth_metrics_pooled_differs_from_per_image_mean():
    # image 0 has 1 valid pixel with error, image 1 has 3 perfect pixels
    pred = t([[[2.0, 9.0], [9.0, 9.0]], [[1.0, 1.0], [1.0, 9.0]]])
    gt = t([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    mask = t([[[True, False], [False, False]], [[True, True], [True, False]]], torch.bool)
    per = depth_metrics(pred, gt, mask, reduction="per_image")
    pooled = depth_metrics(pred, gt, mask, reduction="pooled")
    assert_close(per["abs_rel"], t([1.0, 0.0]))
    assert_close(pooled["abs_rel"], t(0.25))
    assert_close(pooled["d1"], t(0.75))


def test_depth_metrics_ignore_masked_and_nonpositive_target():
    pred, gt = t([[[1.0, 2.0], [3.0, 4.0]]]), t([[[1.5, 2.0], [2.5, 4.0]]])
    mask = t([[[True, True], [True, False]]], torch.bool)
    ref = depth_metrics(pred, gt, mask)
    pred2, gt2 = pred.clone(), gt.clone()
    pred2[0, 1, 1], gt2[0, 1, 1] = float("nan"), -5.0
    assert_close(depth_metrics(pred2, gt2, mask), ref)
    # target 0 means "no measurement" even when the mask says valid
    gt3 = gt.clone()
    gt3[0, 1, 1] = 0.0
    assert_close(depth_metrics(pred, gt3, ones_mask(pred)), ref)


def test_depth_metrics_nonpositive_prediction_is_finite():
    m = depth_metrics(t([[[0.0, -1.0]]]), t([[[1.0, 2.0]]]), ones_mask(t([[[0.0, 0.0]]])))
    assert all(torch.isfinite(v).all() for v in m.values())
    assert m["d1"].item() == 0.0


def test_depth_metrics_hw_input():
    m = depth_metrics(t([[1.0, 2.0]]), t([[1.0, 1.0]]), ones_mask(t([[1.0, 1.0]])))
    assert_close(m["abs_rel"], t([0.5]))


@pytest.mark.parametrize("reduction", ["per_image", "pooled"])
def test_depth_metrics_all_invalid_raises(reduction):
    x = torch.ones(2, 2, 2)
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(x, x, torch.zeros(2, 2, 2, dtype=torch.bool), reduction=reduction)


def test_depth_metrics_one_empty_image_raises_per_image_only():
    x = torch.ones(2, 2, 2)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    with pytest.raises(ValueError, match=r"\[1\]"):
        depth_metrics(x, x, mask, reduction="per_image")
    assert_close(depth_metrics(x, x, mask, reduction="pooled")["d1"], t(1.0))


def test_depth_metrics_bad_reduction():
    x = torch.ones(1, 2, 2)
    with pytest.raises(ValueError, match="reduction"):
        depth_metrics(x, x, ones_mask(x), reduction="mean")


# ---------------------------------------------------------------- evaluate_relative

def test_evaluate_relative_perfect_affine_disparity():
    gt = t([[[1.0, 2.0], [4.0, 8.0]]])
    pred = 3.0 / gt + 2.0
    m = evaluate_relative(pred, gt, ones_mask(gt), min_depth=0.1, max_depth=10.0)
    assert_close(m["abs_rel"], t([0.0]), atol=1e-6, rtol=0)
    assert_close(m["d1"], t([1.0]))


def test_evaluate_relative_by_hand_with_clamp_and_range():
    # valid gt [1, 2, 4] (disparity [1, .5, .25]); the 4th pixel (gt 10) is out of range.
    gt = t([[[1.0, 2.0, 4.0, 10.0]]])
    pred = t([[[0.0, 1.0, 2.0, 123.0]]])
    # lstsq: mean p = 1, mean g = 7/12, cov = -1/4, var = 2/3 -> scale -3/8, shift 23/24
    aligned = [23 / 24, 23 / 24 - 3 / 8, 23 / 24 - 6 / 8]  # last 0.2083 < 1/4.5: clamped
    depth = [1 / aligned[0], 1 / aligned[1], 4.5]
    g = [1.0, 2.0, 4.0]
    abs_rel = sum(abs(d - x) / x for d, x in zip(depth, g)) / 3
    rmse = math.sqrt(sum((d - x) ** 2 for d, x in zip(depth, g)) / 3)
    m = evaluate_relative(pred, gt, ones_mask(gt), min_depth=0.9, max_depth=4.5)
    assert_close(m["abs_rel"], t([abs_rel]))
    assert_close(m["rmse"], t([rmse]))
    assert_close(m["d1"], t([1.0]))  # ratios 1.04, 1.17, 1.125
    # the out-of-range pixel's prediction plays no part
    pred2 = pred.clone()
    pred2[0, 0, 3] = -1e6
    assert_close(evaluate_relative(pred2, gt, ones_mask(gt), 0.9, 4.5), m)


def np_evaluate_relative(pred, gt, mask, lo, hi):
    valid = mask & (gt > lo) & (gt < hi)
    s, b = np_lstsq(pred[valid], 1.0 / gt[valid])
    aligned = np.clip(s * pred[valid] + b, 1.0 / hi, 1.0 / lo)
    return np_eval_depth(1.0 / aligned, gt[valid])


def test_evaluate_relative_matches_numpy_and_is_affine_invariant():
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(2, 6, 6, generator=g) * 12 + 0.2
    pred = 1.0 / gt + 0.05 * torch.randn(2, 6, 6, generator=g)
    mask = torch.rand(2, 6, 6, generator=g) > 0.2
    lo, hi = 0.5, 10.0
    m = evaluate_relative(pred, gt, mask, lo, hi)
    for i in range(2):
        ref = np_evaluate_relative(pred[i].double().numpy(), gt[i].double().numpy(),
                                   mask[i].numpy(), lo, hi)
        for k in KEYS:
            assert_close(m[k][i], t(ref[k]), msg=k, rtol=1e-4, atol=1e-5)
    for a, b in [(5.0, 3.0), (0.2, -7.0), (-2.0, 1.0)]:
        assert_close(evaluate_relative(a * pred + b, gt, mask, lo, hi), m, rtol=1e-4, atol=1e-5)


def test_evaluate_relative_min_depth_zero_and_pooled():
    gt = t([[[1.0, 2.0], [4.0, 8.0]]])
    m = evaluate_relative(1.0 / gt, gt, ones_mask(gt), 0.0, 80.0, reduction="pooled")
    assert m["abs_rel"].shape == ()
    assert_close(m["abs_rel"], t(0.0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        evaluate_relative(1.0 / gt, gt, ones_mask(gt), 5.0, 1.0)


# ---------------------------------------------------------------- pair_accuracy

def test_pair_accuracy_single_image_by_hand():
    disp = t([[1.0, 2.0], [3.0, 3.0]])
    pairs = [
        {"point1": [1, 0], "point2": [0, 0], "closer_point": "point1"},  # 3 > 1: right
        {"point1": [0, 1], "point2": [1, 1], "closer_point": "point1"},  # 2 < 3: wrong
        {"point1": [0, 0], "point2": [0, 1], "closer_point": "point2"},  # 2 > 1: right
        {"point1": [1, 0], "point2": [1, 1], "closer_point": "point1"},  # tie: wrong
    ]
    r = pair_accuracy(disp, pairs)
    assert r["correct"] == 2 and r["total"] == 4
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["per_image"] == {"": pytest.approx(0.5)}
    # same with an ndarray, and with a one-image annotation dict
    assert pair_accuracy(disp.numpy(), pairs)["correct"] == 2
    assert pair_accuracy(disp, {"a.png": pairs})["per_image"] == {"a.png": pytest.approx(0.5)}


def test_pair_accuracy_dict_of_images():
    preds = {"a.jpg": np.array([[0.0, 1.0]]), "b.jpg": torch.tensor([[5.0, 1.0]]),
             "unannotated.jpg": np.zeros((1, 1))}
    ann = {
        "a.jpg": [{"point1": [0, 1], "point2": [0, 0], "closer_point": "point1"}],
        "b.jpg": [{"point1": [0, 1], "point2": [0, 0], "closer_point": "point1"},
                  {"point1": [0, 1], "point2": [0, 0], "closer_point": "point2"},
                  {"point1": [0, 0], "point2": [0, 1], "closer_point": "point1"}],
    }
    r = pair_accuracy(preds, ann)
    assert (r["correct"], r["total"]) == (3, 4)
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["per_image"] == {"a.jpg": 1.0, "b.jpg": pytest.approx(2 / 3)}


def test_pair_accuracy_flipped_disparity_gives_complement():
    g = torch.Generator().manual_seed(4)
    disp = torch.rand(8, 9, generator=g)
    rng = np.random.default_rng(0)
    pairs = [{"point1": [int(rng.integers(8)), int(rng.integers(9))],
              "point2": [int(rng.integers(8)), int(rng.integers(9))],
              "closer_point": rng.choice(["point1", "point2"])} for _ in range(50)]
    ties = sum(disp[tuple(p["point1"])] == disp[tuple(p["point2"])] for p in pairs)
    a = pair_accuracy(disp, pairs)["correct"]
    b = pair_accuracy(-disp, pairs)["correct"]
    assert a + b == 50 - ties


@pytest.mark.parametrize("point", [[2, 0], [0, 3], [-1, 0], [0, 1.5]])
def test_pair_accuracy_bad_point_names_image_and_point(point):
    ann = {"img/x.png": [{"point1": [0, 0], "point2": point, "closer_point": "point1"}]}
    with pytest.raises(ValueError, match=r"img/x\.png.*point2"):
        pair_accuracy({"img/x.png": torch.zeros(2, 3)}, ann)


def test_pair_accuracy_other_errors():
    pair = {"point1": [0, 0], "point2": [0, 1], "closer_point": "point1"}
    with pytest.raises(ValueError, match="missing.png"):
        pair_accuracy({"a.png": torch.zeros(2, 2)}, {"missing.png": [pair]})
    with pytest.raises(ValueError, match="closer_point"):
        pair_accuracy(torch.zeros(2, 2), [dict(pair, closer_point="point3")])
    with pytest.raises(ValueError, match="no pairs"):
        pair_accuracy(torch.zeros(2, 2), [])
