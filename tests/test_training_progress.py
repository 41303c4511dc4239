"""The learning verdict: did a run improve on its starting point by the margin? (pure)"""

from __future__ import annotations

import math

from depthlib.training.progress import learning_verdict


def _val(*pairs):
    return [{"step": s, "val_abs_rel": v, "loss": 1.0} if s else {"step": 0, "val_abs_rel": v} for s, v in pairs]


def test_validation_against_the_step_0_row():
    good = learning_verdict(_val((0, 0.44), (100, 0.35), (300, 0.30)), margin=0.05)
    assert good["basis"] == "val_abs_rel" and good["learned"]
    assert math.isclose(good["improvement"], 1 - 0.30 / 0.44, abs_tol=1e-4)
    # the outlier: 0.408 untrained -> 0.392 after training is a 3.9% improvement
    bad = learning_verdict(_val((0, 0.408), (300, 0.392)), margin=0.05)
    assert not bad["learned"] and math.isclose(bad["improvement"], 0.0392, abs_tol=1e-4)
    assert learning_verdict(_val((0, 0.408), (300, 0.392)), margin=0.03)["learned"]
    # a run that got worse, or blew up to NaN, did not learn
    assert not learning_verdict(_val((0, 0.3), (300, 0.5)), 0.05)["learned"]
    nan = learning_verdict(_val((0, 0.3), (300, float("nan"))), 0.05)
    assert not nan["learned"] and nan["improvement"] is None


def test_training_loss_without_validation_and_nothing_to_compare():
    rows = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}, {"step": 30, "loss": 1.0}]
    v = learning_verdict(rows, 0.05)
    assert v["basis"] == "loss" and v["learned"] and v["improvement"] == 0.5
    assert not learning_verdict([{"step": 10, "loss": 2.0}, {"step": 30, "loss": 1.95}], 0.05)["learned"]
    assert learning_verdict([{"step": 10, "loss": 2.0}], 0.05) is None
    # validation that does not start at step 0 (a run resumed from before this flag existed) -> the loss
    assert learning_verdict([{"step": 100, "val_abs_rel": 0.3, "loss": 2.0},
                             {"step": 200, "val_abs_rel": 0.2, "loss": 1.0}], 0.05)["basis"] == "loss"


def test_a_run_that_does_not_beat_the_layout_prior_did_not_learn():
    rows = _val((0, 0.44), (300, 0.35))
    rows[0]["val_layout_prior_abs_rel"] = 0.337
    v = learning_verdict(rows, 0.05)
    assert v["improvement"] > 0.05 and v["layout_prior"] == 0.337 and not v["learned"]
    rows[-1]["val_abs_rel"] = 0.30
    assert learning_verdict(rows, 0.05)["learned"]


def test_layout_prior_is_the_per_pixel_median_of_the_sets_disparity():
    import numpy as np
    import torch

    from depthlib.evaluation.baselines import layout_prior, layout_prior_scores
    from depthlib.evaluation.protocol import Protocol

    relative, metric = Protocol(0.1, 100.0, "disparity"), Protocol(0.1, 100.0, "none")
    ones = np.ones((2, 2), bool)
    depths = [np.array([[1.0, 2.0], [4.0, 5.0]]), np.array([[2.0, 2.0], [4.0, 10.0]]),
              np.array([[4.0, 1.0], [4.0, 50.0]])]
    # disparity per pixel: (1, 1/2, 1/4) -> 1/2; (1/2, 1/2, 1) -> 1/2; (1/4 x3) -> 1/4; (1/5, 1/10, 1/50) -> 1/10
    torch.testing.assert_close(layout_prior(depths, [ones] * 3, relative), torch.tensor([[0.5, 0.5], [0.25, 0.1]]))
    torch.testing.assert_close(layout_prior(depths, [ones] * 3, metric), torch.tensor([[2.0, 2.0], [4.0, 10.0]]))
    # invalid pixels are left out of the median; a pixel no image covers takes the median of all values
    valid = [np.array([[True, False], [True, True]])] * 3
    assert float(layout_prior(depths, valid, metric)[0, 1]) == 4.0
    # images of another size are resized to the common one (nearest) for the median and scored at their own
    big = np.kron(depths[1], np.ones((2, 2)))
    torch.testing.assert_close(layout_prior(depths[:2] + [big], [ones, ones, np.ones((4, 4), bool)], metric),
                               torch.tensor([[2.0, 2.0], [4.0, 10.0]]))
    # a set whose images are one map up to scale and shift in disparity: the prior is exact after alignment
    base = 1.0 / np.linspace(1, 10, 12).reshape(3, 4)
    same = [1.0 / (s * base + 0.01) for s in (1.0, 2.0, 3.0)]
    assert layout_prior_scores(same, [np.ones((3, 4), bool)] * 3, relative)["abs_rel"] < 1e-5
    # a set whose images differ is not: the prior scores what an image-blind map can do
    assert layout_prior_scores(depths, [ones] * 3, relative)["abs_rel"] > 0.05


def test_a_run_whose_training_ssi_stays_at_a_constant_predictions_did_not_learn():
    # the collapsed student of issue #22 (measured): validation improved 14% and beat the layout prior,
    # but its training ssi stayed at 0.97 x that of a constant prediction
    rows = [{"step": 0, "val_abs_rel": 0.450, "val_layout_prior_abs_rel": 0.4115},
            {"step": 290, "loss": 2.0, "ssi": 0.968, "ssi_blind": 0.99},
            {"step": 300, "loss": 2.0, "ssi": 0.968, "ssi_blind": 0.99, "val_abs_rel": 0.388}]
    v = learning_verdict(rows, 0.05)
    assert v["improvement"] > 0.1 and v["last"] < v["layout_prior"] and not v["learned"]
    assert v["ssi_over_blind"] == round(0.968 / 0.99, 4)
    rows[-1]["ssi"] = 0.073  # the same run's good twin
    assert learning_verdict(rows, 0.05)["learned"]


def test_ssi_blind_is_the_ssi_of_a_constant_prediction():
    import torch

    from depthlib.training.objectives import RelativeObjective

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], x.shape[2], x.shape[3], requires_grad=True) + 3.0

    g = torch.Generator().manual_seed(0)
    batch = {"target": torch.rand(2, 14, 14, generator=g) + 0.1, "mask": torch.ones(2, 14, 14, dtype=torch.bool),
             "region": torch.zeros(2, 14, 14)}
    terms = RelativeObjective(trim=0.1)(Constant(), torch.zeros(2, 3, 14, 14), batch)
    torch.testing.assert_close(terms["ssi"], terms["ssi_blind"])
    assert 0.5 < float(terms["ssi_blind"]) < 1.2 and float(terms["pred_zero"]) == 0.0


def test_the_pipeline_report_marks_a_stage_that_did_not_learn():
    from depthlib.pipeline.report import markdown, not_learning

    ok = learning_verdict(_val((0, 0.44), (300, 0.30)), 0.05)
    bad = learning_verdict(_val((0, 0.408), (300, 0.392)), 0.05)
    report = {"models": {}, "metric_from": "student_tiny", "pictures": {},
              "stages": {"teacher": {"status": "ran", "seconds": 120, "learning": ok},
                         "student_tiny": {"status": "ran", "seconds": 130, "learning": bad},
                         "pseudo_labels": {"status": "ran", "seconds": 12}}}
    assert list(not_learning(report)) == ["student_tiny"]
    text = markdown(report)
    assert "| teacher | ran | 120 | yes (val_abs_rel 0.440 → 0.300) |" in text
    assert "| student_tiny | ran | 130 | **NO** (val_abs_rel 0.408 → 0.392) |" in text
    assert "**Stages that did not learn**" in text and "student_tiny: val_abs_rel 0.408 at the start" in text


def test_the_evaluation_jobs_grid_sample_gives_the_full_resolution_prior():
    """The evaluation job keeps each ground truth as a grid sample (valid pixels of its protocol,
    crop included, long side <= PRIOR_GRID_SIDE): exact for small maps, close for large ones."""
    import numpy as np
    import pytest
    import torch

    from depthlib.evaluation.baselines import PRIOR_GRID_SIDE, grid_prior_scores, layout_prior_scores, prior_grid
    from depthlib.evaluation.protocol import Protocol, valid_pixels

    rng = np.random.default_rng(0)

    def scenes(n, h, w):
        y = np.linspace(0, 1, h)[:, None]
        x = np.linspace(0, 1, w)[None, :]
        return [(1.0 + 8 * y * (1 + 0.3 * rng.random()) + 0.5 * np.sin(6 * x + rng.random() * 6)
                 + 0.05 * rng.random((h, w))).astype(np.float32) for _ in range(n)]

    for alignment in ("disparity", "none"):
        for h, w, tol in ((60, 80, 2e-3), (480, 640, 0.02)):  # exact up to float16; a 4x grid (0.5-0.9% seen)
            protocol = Protocol(0.5, 8.0, alignment, "eigen_nyu" if h == 480 and alignment == "disparity" else None)
            depths = scenes(6, h, w)
            masks = [rng.random((h, w)) > 0.1 for _ in depths]
            valid = [valid_pixels(torch.from_numpy(d), torch.from_numpy(m), protocol).numpy()
                     for d, m in zip(depths, masks)]
            full = layout_prior_scores(depths, masks, protocol)
            grids = [prior_grid(d, v) for d, v in zip(depths, valid)]
            got = grid_prior_scores(grids, protocol)
            assert got["images"] == full["images"] == 6
            assert got["abs_rel"] == pytest.approx(full["abs_rel"], rel=tol), (alignment, h)
            assert np.load(__import__("io").BytesIO(grids[0])).shape[1] <= PRIOR_GRID_SIDE
