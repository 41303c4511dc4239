"""Tests for depthlib.losses: relative (disparity) losses, feature alignment, SiLog.

Known values are worked out by hand on tiny tensors; random cases are checked
against loop-based numpy re-implementations written from the papers' formulas.
"""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from depthlib import losses, metrics
from depthlib.losses import (
    feature_alignment_loss,
    gradient_matching_loss,
    relative_depth_loss,
    silog_loss,
    ssi_loss,
)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def ones_mask(x):
    return torch.ones_like(x, dtype=torch.bool)


def random_case(seed, shape=(3, 12, 10), p_valid=0.7):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g) * 2 + 0.1
    pred = 0.7 * target + 0.3 * torch.rand(shape, generator=g)
    mask = torch.rand(shape, generator=g) < p_valid
    return pred, target, mask


# ---- numpy references (float64, loops, straight from the formulas)

def np_normalise(x, how):
    if how == "lstsq":
        raise AssertionError
    med = np.sort(x)[(len(x) - 1) // 2]  # lower median, torch's convention
    mad = np.mean(np.abs(x - med))
    return (x - med) / mad


def np_aligned(p, g, m, method):
    """Return full-size arrays (a, b) compared by the loss; NaN outside the mask."""
    a, b = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    if method == "lstsq":
        A = np.stack([p[m], np.ones(m.sum())], axis=1)
        (s, sh), *_ = np.linalg.lstsq(A, g[m], rcond=None)
        if s < 0:  # inverted: align median and mean absolute deviation instead
            mp, mg = np.sort(p[m])[(m.sum() - 1) // 2], np.sort(g[m])[(m.sum() - 1) // 2]
            s = np.mean(np.abs(g[m] - mg)) / np.mean(np.abs(p[m] - mp))
            sh = mg - s * mp
        a[m], b[m] = s * p[m] + sh, g[m]
    else:
        a[m], b[m] = np_normalise(p[m], method), np_normalise(g[m], method)
    return a, b


def np_ssi(p, g, m, method="lstsq", trim=0.0):
    a, b = np_aligned(p, g, m, method)
    err = np.sort(np.abs(a - b)[m])
    n_keep = len(err) - int(math.floor(trim * len(err) + 1e-9))
    return err[:n_keep].mean()


def np_gm(p, g, m, method="lstsq", scales=4):
    a, b = np_aligned(p, g, m, method)
    r = a - b
    total = 0.0
    for k in range(scales):
        s = 2 ** k
        rs, ms = r[::s, ::s], m[::s, ::s]
        acc = 0.0
        for i in range(rs.shape[0]):
            for j in range(rs.shape[1]):
                if j + 1 < rs.shape[1] and ms[i, j] and ms[i, j + 1]:
                    acc += abs(rs[i, j + 1] - rs[i, j])
                if i + 1 < rs.shape[0] and ms[i, j] and ms[i + 1, j]:
                    acc += abs(rs[i + 1, j] - rs[i, j])
        total += acc / ms.sum()
    return total


def to_np(*xs):
    return [x.double().numpy() if x.dtype != torch.bool else x.numpy() for x in xs]


# A 2x2 case with a known aligned residual: p and e are orthogonal to each
# other and to the constant image, so lstsq of target = 2p + 3 + e gives
# aligned = 2p + 3 and residual R = -e = [[-1, 1], [1, -1]].
P22 = t([[[1.0, -1.0], [1.0, -1.0]]])
T22 = 2 * P22 + 3 + t([[[1.0, -1.0], [-1.0, 1.0]]])

# A 3x3 version: p varies by column, e by row.
P33 = t([[[1.0, 0.0, -1.0]] * 3])
E33 = t([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]])
T33 = 2 * P33 + 3 + E33


def test_alignment_is_implemented_once():
    assert losses.align_scale_shift is metrics.align_scale_shift


# ---------------------------------------------------------------- ssi_loss

def test_ssi_lstsq_by_hand():
    assert_close(ssi_loss(P22, T22, ones_mask(P22)), t(1.0))  # mean |e|


def test_ssi_median_by_hand():
    # pred [1,2,3]: median 2, MAD 2/3 -> [-1.5, 0, 1.5]
    # target [2,4,9]: median 4, MAD 7/3 -> [-6/7, 0, 15/7]
    # |diffs| = [4.5/7, 0, 4.5/7] -> mean 3/7
    p, g = t([[[1.0, 2.0, 3.0]]]), t([[[2.0, 4.0, 9.0]]])
    assert_close(ssi_loss(p, g, ones_mask(p), method="median"), t(3 / 7))


@pytest.mark.parametrize("method", ["lstsq", "median"])
@pytest.mark.parametrize("trim", [0.0, 0.1, 0.25])
def test_ssi_matches_numpy_reference(method, trim):
    pred, target, mask = random_case(0)
    got = ssi_loss(pred, target, mask, method=method, reduction="none", trim=trim)
    p, g, m = to_np(pred, target, mask)
    ref = [np_ssi(p[i], g[i], m[i], method, trim) for i in range(3)]
    assert_close(got, t(ref), rtol=1e-5, atol=1e-6)
    assert_close(ssi_loss(pred, target, mask, method=method, trim=trim), t(np.mean(ref)),
                 rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lstsq", "median"])
@pytest.mark.parametrize("a,b", [(0.3, -2.0), (7.0, 5.0), (0.05, 2.0)])
def test_ssi_invariant_to_scale_and_shift_of_prediction(method, a, b):
    pred, target, mask = random_case(1)
    ref = ssi_loss(pred, target, mask, method=method, reduction="none")
    assert ref.min() > 1e-3  # not trivially zero
    got = ssi_loss(a * pred + b, target, mask, method=method, reduction="none")
    assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["lstsq", "median"])
def test_ssi_zero_for_affine_prediction_and_positive_otherwise(method):
    _, target, mask = random_case(2)
    assert_close(ssi_loss(4 * target - 1, target, mask, method=method), t(0.0), atol=1e-5, rtol=0)
    assert ssi_loss(target ** 2, target, mask, method=method) > 1e-3


@pytest.mark.parametrize("method", ["lstsq", "median"])
def test_ssi_ignores_masked_pixels(method):
    pred, target, mask = random_case(3)
    pred = pred.requires_grad_()
    ref = ssi_loss(pred, target, mask, method=method, trim=0.1)
    ref.backward()
    junk_p, junk_t = pred.detach().clone(), target.clone()
    junk_p[~mask] = float("nan")
    junk_t[~mask] = float("inf")
    junk_p.requires_grad_()
    got = ssi_loss(junk_p, junk_t, mask, method=method, trim=0.1)
    got.backward()
    assert_close(got, ref)
    assert torch.isfinite(junk_p.grad).all()
    assert (junk_p.grad[~mask] == 0).all()
    assert_close(junk_p.grad, pred.grad)


def test_ssi_trim_removes_the_top_fraction():
    # 20 pixels, target = 20*pred + 1 except two gross outliers (the slope keeps
    # the least-squares scale positive despite them).
    pred = torch.linspace(0, 1, 20).reshape(1, 4, 5)
    target = 20 * pred + 1
    target[0, 1, 1] += 50.0
    target[0, 3, 2] -= 40.0
    mask = ones_mask(pred)
    p, g, m = to_np(pred, target, mask)
    a, b = np_aligned(p[0], g[0], m[0], "lstsq")
    err = np.abs(a - b)
    outliers = err.ravel().argsort()[-2:]
    assert set(outliers) == {1 * 5 + 1, 3 * 5 + 2}  # the constructed pixels err most
    kept = np.delete(err.ravel(), outliers)
    full = ssi_loss(pred, target, mask)
    trimmed = ssi_loss(pred, target, mask, trim=0.1)  # floor(0.1 * 20) = 2 dropped
    assert_close(full, t(err.mean()))
    assert_close(trimmed, t(kept.mean()))
    assert trimmed < 0.5 * full  # the outliers also pull the fit, so not ~0
    # trim rounds the dropped count down: 0.14 * 20 = 2.8 -> 2 dropped
    assert_close(ssi_loss(pred, target, mask, trim=0.14), trimmed)
    # floor(0.05 * 20) = 1: only the largest error goes, the other outlier stays
    one_dropped = np.sort(err.ravel())[:-1].mean()
    assert_close(ssi_loss(pred, target, mask, trim=0.05), t(one_dropped))
    assert one_dropped > trimmed + 1.0


def test_ssi_trim_is_per_image():
    clean = torch.linspace(0, 1, 10).reshape(1, 2, 5)
    pred = torch.cat([clean, clean])
    target = 60 * pred
    target[1, 0, 0] += 100.0  # an outlier only in image 1 (the fitted scale stays positive)
    got = ssi_loss(pred, target, ones_mask(pred), trim=0.1, reduction="none")
    assert_close(got[0], t(0.0), atol=1e-6, rtol=0)
    p, g, m = to_np(pred, target, ones_mask(pred))
    assert_close(got[1], t(np_ssi(p[1], g[1], m[1], trim=0.1)))


def test_ssi_reduction_mean_skips_empty_images():
    pred = torch.stack([P22[0], P22[0], P22[0]])
    target = torch.stack([T22[0], 3 * P22[0], T22[0]])
    mask = ones_mask(pred)
    mask[2] = False
    per = ssi_loss(pred, target, mask, reduction="none")
    assert_close(per, t([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert_close(ssi_loss(pred, target, mask), t(0.5))  # mean of images 0 and 1


def test_ssi_degenerate_images_are_finite():
    pred = torch.stack([torch.full((2, 2), 3.0), t([[1.0, 2.0], [3.0, 4.0]])]).requires_grad_()
    target = t([[[1.0, 2.0], [3.0, 6.0]], [[5.0, 7.0], [1.0, 1.0]]])
    mask = torch.stack([torch.ones(2, 2, dtype=torch.bool), t([[True, False], [False, False]], torch.bool)])
    for method in ("lstsq", "median"):
        per = ssi_loss(pred, target, mask, method=method, reduction="none")
        per.sum().backward()
        assert torch.isfinite(pred.grad).all()
        pred.grad = None
    # constant prediction aligns to the mean target: mean |t - 3| = (2+1+0+3)/4
    assert_close(ssi_loss(pred, target, mask, reduction="none"), t([1.5, 0.0]))


# ---------------------------------------------------------------- gradient matching

def test_gm_by_hand_2x2():
    # R = [[-1, 1], [1, -1]]: |grad_x| sums to 4, |grad_y| to 4, over M = 4
    # pixels -> 2; coarser scales are 1x1 and add nothing.
    assert_close(gradient_matching_loss(P22, T22, ones_mask(P22)), t(2.0))


def test_gm_by_hand_3x3_two_scales_and_mask():
    mask = ones_mask(P33)
    # scale 0: R = -E33, grad_y 6 over 9 pixels; scale 1 (rows/cols 0, 2): 4 over 4.
    assert_close(gradient_matching_loss(P33, T33, mask, scales=1), t(2 / 3))
    assert_close(gradient_matching_loss(P33, T33, mask), t(2 / 3 + 1.0))
    # the centre pixel (p = e = 0 there, so the fit is unchanged) masked out:
    # scale 0 keeps the 4 vertical pairs of columns 0 and 2 over 8 pixels.
    mask[0, 1, 1] = False
    assert_close(gradient_matching_loss(P33, T33, mask), t(4 / 8 + 1.0))


@pytest.mark.parametrize("method", ["lstsq", "median"])
def test_gm_matches_numpy_reference(method):
    pred, target, mask = random_case(4, shape=(2, 13, 11), p_valid=0.8)
    got = gradient_matching_loss(pred, target, mask, method=method, reduction="none")
    p, g, m = to_np(pred, target, mask)
    ref = [np_gm(p[i], g[i], m[i], method) for i in range(2)]
    assert_close(got, t(ref), rtol=1e-5, atol=1e-6)
    assert_close(gradient_matching_loss(pred, target, mask, method=method), t(np.mean(ref)),
                 rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lstsq", "median"])
@pytest.mark.parametrize("a,b", [(0.25, 3.0), (9.0, -4.0)])
def test_gm_invariant_to_scale_and_shift_of_prediction(method, a, b):
    pred, target, mask = random_case(5)
    ref = gradient_matching_loss(pred, target, mask, method=method)
    assert ref > 1e-3
    assert_close(gradient_matching_loss(a * pred + b, target, mask, method=method), ref,
                 rtol=1e-4, atol=1e-5)


def test_gm_zero_for_affine_prediction():
    _, target, mask = random_case(6)
    assert_close(gradient_matching_loss(0.5 * target + 2, target, mask), t(0.0), atol=1e-5, rtol=0)


def test_gm_ignores_masked_pixels():
    pred, target, mask = random_case(7)
    ref = gradient_matching_loss(pred, target, mask)
    p2, t2 = pred.clone(), target.clone()
    p2[~mask], t2[~mask] = float("inf"), float("nan")
    assert_close(gradient_matching_loss(p2, t2, mask), ref)


def test_gm_scales_argument_counts_coarser_terms():
    pred, target, mask = random_case(8, shape=(2, 16, 16), p_valid=1.0)
    one = gradient_matching_loss(pred, target, mask, scales=1)
    four = gradient_matching_loss(pred, target, mask, scales=4)
    assert four > one > 0


# ---------------------------------------------------------------- relative_depth_loss

def test_relative_depth_loss_combines_terms_with_published_weights():
    out = relative_depth_loss(P22, T22, ones_mask(P22))
    assert set(out) == {"loss", "ssi", "gm"}
    assert_close(out["ssi"], t(1.0))
    assert_close(out["gm"], t(2.0))
    assert_close(out["loss"], t(1.0 * 1.0 + 2.0 * 2.0))


@pytest.mark.parametrize("method", ["lstsq", "median"])
def test_relative_depth_loss_matches_parts_and_trim_only_hits_ssi(method):
    pred, target, mask = random_case(9)
    target[0, 0, 0] += 30.0
    out = relative_depth_loss(pred, target, mask, ssi_weight=0.5, gm_weight=3.0,
                              trim=0.1, method=method)
    ssi = ssi_loss(pred, target, mask, method=method, trim=0.1)
    gm = gradient_matching_loss(pred, target, mask, method=method)
    assert_close(out["ssi"], ssi)
    assert_close(out["gm"], gm)
    assert_close(out["loss"], 0.5 * ssi + 3.0 * gm)
    untrimmed = relative_depth_loss(pred, target, mask, trim=0.0, method=method)
    assert_close(untrimmed["gm"], out["gm"])
    assert untrimmed["ssi"] > out["ssi"]


# ---------------------------------------------------------------- all-invalid masks and gradients

@pytest.mark.parametrize("fn", [
    lambda p, g, m: ssi_loss(p, g, m),
    lambda p, g, m: ssi_loss(p, g, m, method="median", trim=0.1),
    lambda p, g, m: gradient_matching_loss(p, g, m),
    lambda p, g, m: relative_depth_loss(p, g, m)["loss"],
    lambda p, g, m: silog_loss(p, g, m),
])
def test_all_invalid_mask_gives_zero_loss_and_zero_grad(fn):
    pred = torch.rand(2, 5, 5).requires_grad_()
    target = torch.rand(2, 5, 5) + 0.1
    loss = fn(pred, target, torch.zeros(2, 5, 5, dtype=torch.bool))
    assert loss.shape == ()
    assert loss.item() == 0.0
    loss.backward()
    assert_close(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("method", ["lstsq", "median"])
def test_relative_losses_gradients_finite_and_nonzero(method):
    pred, target, mask = random_case(10)
    pred = pred.requires_grad_()
    out = relative_depth_loss(pred, target, mask, trim=0.1, method=method)
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[mask].abs().sum() > 0
    assert (pred.grad[~mask] == 0).all()


def test_relative_loss_in_half_precision_is_float32_and_finite():
    pred, target, mask = random_case(11)
    out = relative_depth_loss(pred.bfloat16(), target, mask)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert_close(out["loss"], relative_depth_loss(pred.bfloat16().float(), target, mask)["loss"])


def test_input_validation():
    x, m = torch.zeros(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="same shape"):
        ssi_loss(x, torch.zeros(1, 2, 3), m)
    with pytest.raises(ValueError, match="B x H x W"):
        ssi_loss(x[0], x[0], m[0])
    with pytest.raises(ValueError, match="method"):
        ssi_loss(x, x, m, method="mean")
    with pytest.raises(ValueError, match="reduction"):
        gradient_matching_loss(x, x, m, reduction="sum")
    with pytest.raises(ValueError, match="trim"):
        ssi_loss(x, x, m, trim=1.0)
    with pytest.raises(ValueError, match="trim"):
        relative_depth_loss(x, x, m, trim=-0.1)


# ---------------------------------------------------------------- feature alignment

def test_feature_alignment_identical_orthogonal_opposite():
    g = torch.Generator().manual_seed(12)
    f = torch.randn(2, 7, 16, generator=g)
    assert_close(feature_alignment_loss(f, f.clone()), t(0.0))
    assert_close(feature_alignment_loss(3.0 * f, f), t(0.0))  # cosine ignores norm
    e0 = torch.zeros(1, 3, 4); e0[..., 0] = 1.0
    e1 = torch.zeros(1, 3, 4); e1[..., 1] = 1.0
    assert_close(feature_alignment_loss(e0, e1), t(1.0))
    assert_close(feature_alignment_loss(-e0, e0), t(2.0))


def test_feature_alignment_margin_by_hand():
    student = t([[[1.0, 0.0], [1.0, 1.0]]])
    frozen = t([[[1.0, 0.0], [0.0, 1.0]]])
    # token 0: cos 1 (> margin) -> 0; token 1: cos 1/sqrt(2) ~ 0.707 -> 1 - 0.707
    expected = (1 - 1 / math.sqrt(2)) / 2
    assert_close(feature_alignment_loss(student, frozen), t(expected))
    assert_close(feature_alignment_loss(student, frozen, margin=0.7), t(0.0))
    # with margin >= 1 nothing is tolerated: plain mean(1 - cos)
    assert_close(feature_alignment_loss(student, frozen, margin=1.0), t(expected))
    cos09 = t([[[0.9, math.sqrt(1 - 0.81)]]])  # cos 0.9 with e0
    e0 = t([[[1.0, 0.0]]])
    assert_close(feature_alignment_loss(cos09, e0), t(0.0))
    assert_close(feature_alignment_loss(cos09, e0, margin=0.95), t(0.1))


def test_feature_alignment_list_is_averaged_and_frozen_detached():
    e0 = torch.zeros(1, 2, 3); e0[..., 0] = 1.0
    e1 = torch.zeros(1, 2, 3); e1[..., 1] = 1.0
    student = [e0.clone().requires_grad_(), e0.clone().requires_grad_()]
    frozen = [e0.clone().requires_grad_(), e1.clone().requires_grad_()]
    loss = feature_alignment_loss(student, frozen)
    assert_close(loss, t(0.5))  # (0 + 1) / 2
    loss.backward()
    assert frozen[0].grad is None and frozen[1].grad is None
    assert torch.isfinite(student[1].grad).all() and student[1].grad.abs().sum() > 0
    with pytest.raises(ValueError):
        feature_alignment_loss(student, frozen[:1])
    with pytest.raises(ValueError):
        feature_alignment_loss(e0, e0[0])


def test_feature_alignment_gradient_finite_for_zero_vectors():
    s = torch.zeros(1, 2, 4, requires_grad=True)
    loss = feature_alignment_loss(s, torch.randn(1, 2, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- silog

def np_silog(pred, target, mask, lambd=0.5):
    d = np.log(target[mask]) - np.log(pred[mask])
    return np.sqrt(np.mean(d ** 2) - lambd * np.mean(d) ** 2)


def test_silog_by_hand():
    # d = [1, 0]: mean d^2 = 0.5, mean d = 0.5 -> sqrt(0.5 - 0.5 * 0.25)
    pred, target = t([[[1.0, math.e]]]), t([[[math.e, math.e]]])
    assert_close(silog_loss(pred, target, ones_mask(pred)), t(math.sqrt(0.375)))
    assert_close(silog_loss(pred, target, ones_mask(pred), lambd=0.0), t(math.sqrt(0.5)))


@pytest.mark.parametrize("lambd", [0.5, 0.85])
def test_silog_matches_numpy_pooled_over_batch(lambd):
    g = torch.Generator().manual_seed(13)
    target = torch.rand(3, 8, 8, generator=g) * 19 + 1
    pred = target * torch.exp(0.2 * torch.randn(3, 8, 8, generator=g))
    mask = torch.rand(3, 8, 8, generator=g) > 0.3
    p, tg, m = to_np(pred, target, mask)
    assert_close(silog_loss(pred, target, mask, lambd=lambd), t(np_silog(p, tg, m, lambd)),
                 rtol=1e-5, atol=1e-6)


def test_silog_scale_invariance_at_lambda_one_and_masking():
    g = torch.Generator().manual_seed(14)
    target = torch.rand(2, 6, 6, generator=g) + 0.5
    pred = target * torch.exp(0.3 * torch.randn(2, 6, 6, generator=g))
    mask = torch.rand(2, 6, 6, generator=g) > 0.3
    # lambda = 1 gives the log-variance, blind to a global scale
    assert_close(silog_loss(5 * pred, target, mask, lambd=1.0), silog_loss(pred, target, mask, lambd=1.0))
    # lambda = 0.5 is not
    assert not torch.allclose(silog_loss(5 * pred, target, mask), silog_loss(pred, target, mask))
    p2, t2 = pred.clone(), target.clone()
    p2[~mask], t2[~mask] = -1.0, float("nan")
    assert_close(silog_loss(p2, t2, mask), silog_loss(pred, target, mask))


def test_silog_guards_nonpositive_pred_and_perfect_prediction():
    target = t([[[1.0, 2.0], [3.0, 4.0]]])
    pred = t([[[0.0, -1.0], [3.0, 4.0]]]).requires_grad_()
    loss = silog_loss(pred, target, ones_mask(target))
    loss.backward()
    assert torch.isfinite(loss) and loss > 1.0
    assert torch.isfinite(pred.grad).all()
    perfect = target.clone().requires_grad_()
    loss = silog_loss(perfect, target, ones_mask(target))
    loss.backward()
    assert loss < 1e-5
    assert torch.isfinite(perfect.grad).all()


def test_silog_gradient_finite_and_descends():
    g = torch.Generator().manual_seed(15)
    target = torch.rand(2, 5, 5, generator=g) * 10 + 1
    pred = (target * 1.5).requires_grad_()
    mask = ones_mask(target)
    loss = silog_loss(pred, target, mask)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    stepped = silog_loss(pred.detach() - 0.1 * pred.grad, target, mask)
    assert stepped < loss


@pytest.mark.parametrize("fn", [ssi_loss, gradient_matching_loss])
def test_inverted_prediction_is_not_rewarded_and_gets_a_gradient(fn):
    """An inverted disparity map is aligned with a positive scale (median/MAD),
    so it costs more than a constant prediction and its gradient points back."""
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 16, 16, generator=g) + 0.2
    mask = torch.ones_like(target, dtype=torch.bool)
    assert float(fn(2.0 * target + 5.0, target, mask)) < 1e-6
    constant = fn(torch.ones_like(target), target, mask)
    inverted = (-2.0 * target + 5.0).requires_grad_(True)
    loss = fn(inverted, target, mask)
    assert float(loss) > float(constant) > 0.01
    loss.backward()
    step = inverted.detach() - 0.05 * inverted.grad / inverted.grad.abs().max()
    assert float(fn(step, target, mask)) < float(loss)  # descending the gradient helps
