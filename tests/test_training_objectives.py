"""Stage objectives, optimiser schedule, initial weights and the layered config (pure, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from depthlib.cli import parse_layered_config
from depthlib.losses import relative_depth_loss
from depthlib.models import build_model, export_released
from depthlib.models.checkpoints import model_state_to_released
from depthlib.training.config import PRESETS, TrainConfig, config_differences
from depthlib.training.objectives import MetricObjective, RelativeObjective, region_relative_loss
from depthlib.training.optim import lr_factor, make_optimizer, make_scheduler, param_groups
from depthlib.training.weights import frozen_encoder, initialise, load_encoder_strict, start_metric_head_at


def _maps(seed=0, b=3, h=28, w=28):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, h, w, generator=g) + 0.5
    pred = torch.rand(b, h, w, generator=g) + 0.5
    mask = torch.rand(b, h, w, generator=g) > 0.1
    return pred, target, mask


def test_relative_loss_reduction_none_averages_to_mean():
    pred, target, mask = _maps()
    mean = relative_depth_loss(pred, target, mask, trim=0.1)
    per = relative_depth_loss(pred, target, mask, trim=0.1, reduction="none")
    assert per["loss"].shape == (3,)
    for k in ("loss", "ssi", "gm"):
        torch.testing.assert_close(per[k].mean(), mean[k])


def test_region_loss_without_boxes_is_the_plain_loss():
    pred, target, mask = _maps()
    region = torch.zeros_like(mask, dtype=torch.uint8)
    plain = relative_depth_loss(pred, target, mask, trim=0.1)
    for k, v in region_relative_loss(pred, target, mask, region, trim=0.1).items():
        torch.testing.assert_close(v, plain[k])


def test_region_loss_aligns_each_cutmix_region_on_its_own():
    """A prediction that matches each region's label up to that region's own
    scale and shift (two pseudo labels of different scales) costs nothing."""
    _, target, mask = _maps(1)
    region = torch.zeros_like(target, dtype=torch.uint8)
    region[:, 5:15, 8:20] = 1
    pred = torch.where(region.bool(), 3.0 * target + 2.0, 0.5 * target + 0.1)
    loss = region_relative_loss(pred, target, mask, region, trim=0.0)["loss"]
    assert float(loss) < 1e-5
    # one alignment over the whole image cannot explain it
    assert float(relative_depth_loss(pred, target, mask)["loss"]) > 0.05


def test_feature_alignment_on_with_a_frozen_encoder_and_off_without():
    torch.manual_seed(0)
    model = build_model("tiny")
    images = torch.randn(2, 3, 28, 28)
    batch = {"target": torch.rand(2, 28, 28) + 0.1, "mask": torch.ones(2, 28, 28, dtype=torch.bool),
             "region": torch.zeros(2, 28, 28, dtype=torch.uint8)}
    plain = RelativeObjective(trim=0.1)(model, images, batch)
    assert "feat" not in plain
    frozen = build_model("tiny").pretrained  # another random encoder: features differ
    terms = RelativeObjective(trim=0.1, frozen_encoder=frozen, feature_layer=3)(model, images, batch)
    assert float(terms["feat"]) > 0
    torch.testing.assert_close(terms["loss"], plain["loss"] + terms["feat"])
    terms["loss"].backward()
    assert all(p.grad is None for p in frozen.parameters())
    same = RelativeObjective(frozen_encoder=_copy_encoder(model), feature_layer=3)(model, images, batch)
    assert float(same["feat"]) == 0.0  # identical features are above the margin


def _copy_encoder(model):
    enc = build_model("tiny").pretrained
    enc.load_state_dict(model.pretrained.state_dict())
    return enc


def test_metric_objective_is_silog_in_metres():
    torch.manual_seed(0)
    model = build_model("tiny", metric=True, max_depth=20.0)
    images = torch.randn(2, 3, 28, 28)
    batch = {"target": torch.full((2, 28, 28), 5.0), "mask": torch.ones(2, 28, 28, dtype=torch.bool)}
    terms = MetricObjective()(model, images, batch)
    pred = model(images)
    d = torch.log(batch["target"]) - torch.log(pred)
    expected = torch.sqrt((d ** 2).mean() - 0.5 * d.mean() ** 2)
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-4, atol=1e-6)


def test_lr_factor_warmup_then_poly():
    assert lr_factor(0, 100, 10, 0.9) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.9) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.9) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, 10, 0.9) == 0.0
    assert lr_factor(50, 100, 0, 0.0) == 1.0


def test_optimizer_groups_head_at_ten_times_and_scheduler_applies_factor():
    model = build_model("tiny")
    opt = make_optimizer(model, "adam", 1e-4, 10.0, 0.0)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["encoder", "head"]
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-3)
    n_enc = sum(p.numel() for p in opt.param_groups[0]["params"])
    assert n_enc == sum(p.numel() for n, p in model.named_parameters() if n.startswith("pretrained.") and p.requires_grad)
    sched = make_scheduler(opt, 20, 4, 1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.25)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    # works on a DDP-style "module." prefix too
    wrapped = torch.nn.Module()
    wrapped.module = model
    assert sum(len(g["params"]) for g in param_groups(wrapped, 1.0)) == len(
        [p for p in model.parameters() if p.requires_grad])


def test_initialise_from_released_file_whole_or_encoder_only(tmp_path):
    torch.manual_seed(1)
    source = build_model("tiny")
    path = tmp_path / "teacher.pth"
    export_released(source, path)
    student = build_model("tiny")
    assert initialise(student, str(path), None, encoder_only=False) == str(path)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(student.state_dict()[k], v)
    metric = build_model("tiny", metric=True)
    head_before = {k: v.clone() for k, v in metric.state_dict().items() if k.startswith("depth_head.")}
    initialise(metric, str(path), None, encoder_only=True)
    for k, v in metric.state_dict().items():
        if k.startswith("pretrained."):
            torch.testing.assert_close(v, source.state_dict()[k])
        else:
            torch.testing.assert_close(v, head_before[k])  # fresh head
    assert initialise(build_model("tiny"), None, None, encoder_only=False) is None


def test_fresh_metric_head_starts_at_the_given_depth():
    torch.manual_seed(3)
    model = build_model("tiny", metric=True, max_depth=20.0).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before = model(x)
    start_metric_head_at(model, 2.5)
    last = model.depth_head.scratch.output_conv2[2]
    # sigmoid(b) * max_depth = 2.5: b = log(0.125 / 0.875)
    assert float(last.bias) == pytest.approx(math.log(0.125 / 0.875), rel=1e-6)
    with torch.no_grad():
        after = model(x)
        assert float(before.mean()) > 5.0 and abs(float(after.median()) - 2.5) < 0.5
        last.weight.zero_()  # only the bias left: exactly the start depth everywhere
        torch.testing.assert_close(model(x), torch.full_like(after, 2.5))
    with pytest.raises(ValueError, match="metric model"):
        start_metric_head_at(build_model("tiny"), 2.5)


def test_pretrained_encoder_in_dinov2_and_timm_layouts(tmp_path):
    torch.manual_seed(2)
    enc = build_model("tiny").pretrained
    official = dict(enc.state_dict())  # DINOv2 release layout: no prefix, with mask_token
    timm_style = {k: v for k, v in official.items() if k != "mask_token"}
    for i, state in enumerate((official, timm_style)):
        path = tmp_path / f"dinov2_{i}.pth"
        torch.save(state, path)
        model = build_model("tiny")
        initialise(model, None, str(path), encoder_only=False)
        for k, v in official.items():
            torch.testing.assert_close(model.pretrained.state_dict()[k], v)
        frozen = frozen_encoder(str(path), "tiny")
        assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match="registers"):
        load_encoder_strict(build_model("tiny").pretrained, {**official, "register_tokens": torch.zeros(1)},
                            "tiny", "x")
    with pytest.raises(ValueError, match="missing"):
        load_encoder_strict(build_model("tiny").pretrained, {k: v for k, v in official.items()
                                                            if not k.startswith("blocks.1.")}, "tiny", "x")
    # ViT-G names its MLP w12/w3 in the DINOv2 release: renamed on load (checked on the key mapping)
    assert "pretrained.blocks.0.mlp.w12.weight" in model_state_to_released(
        {"pretrained.blocks.0.mlp.fc1.weight": torch.zeros(1)}, "vitg")


def test_layered_config_priority(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("lr: 0.001\nbatch-size: 4\nseed: 9\n")
    argv = ["--preset", "tiny_cpu", "--config", str(yaml_file), "--stage", "teacher", "--data", "a", "--data", "b",
            "--output", "out", "--seed", "3", "--workers", "2"]
    cfg = parse_layered_config(TrainConfig, argv, PRESETS)
    assert cfg.encoder == "tiny" and cfg.crop == 126  # preset over defaults
    assert cfg.lr == 0.001 and cfg.batch_size == 4  # file over preset
    assert cfg.seed == 3  # flags over file
    assert cfg.data == ["a", "b"] and cfg.preset == "tiny_cpu"
    assert cfg.global_batch == 8
    with pytest.raises(SystemExit):
        parse_layered_config(TrainConfig, ["--stage", "teacher"], PRESETS)  # --data, --output missing
    yaml_file.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        parse_layered_config(TrainConfig, ["--config", str(yaml_file)], PRESETS)


def test_paper_presets_and_global_batch():
    cfg = TrainConfig(**PRESETS["student_vits"], data=["d"], output="o", workers=4)
    assert cfg.global_batch == 192 and cfg.grad_accum == 2 and cfg.trim == 0.1 and cfg.cutmix
    teacher = TrainConfig(**PRESETS["teacher_vitg"], data=["d"], output="o", workers=8)
    assert teacher.global_batch == 64 and teacher.steps == 160_000 and math.isclose(teacher.lr, 5e-6)
    metric = TrainConfig(**PRESETS["metric_hypersim"], data=["d"], output="o")
    assert metric.metric and metric.max_depth == 20.0 and metric.optimizer == "adamw"
    with pytest.raises(ValueError, match="multiple"):
        TrainConfig(**PRESETS["student_vits"], data=["d"], output="o", workers=5)


def test_resume_refuses_changed_settings_but_allows_schedule_ones():
    cfg = TrainConfig(stage="teacher", data=["d"], output="o", steps=100)
    saved = cfg.to_dict()
    assert config_differences(saved, TrainConfig(stage="teacher", data=["d"], output="o", steps=300,
                                                 log_every=5, workers=3)) == []
    diffs = config_differences(saved, TrainConfig(stage="teacher", data=["d"], output="o", lr=1e-3, crop=266))
    assert [d.split(":")[0] for d in diffs] == ["crop", "lr"]


def test_tensorboard_tracker_writes_the_rows_to_the_output(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from depthlib.training.records import Tracker

    tracker = Tracker("tensorboard", str(tmp_path / "run"), "run", {}, "unused")
    for step, loss in ((10, 0.5), (20, 0.25)):
        tracker.log({"step": step, "time": 1.0 + step, "loss": loss, "lr": 1e-4, "note": "text is skipped"})
    tracker.close()
    files = list((tmp_path / "run" / "tensorboard").iterdir())
    assert len(files) == 1
    events = EventAccumulator(str(files[0]))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(10, 0.5), (20, 0.25)]


def test_curves_and_samples_pictures():
    import io

    import numpy as np
    from PIL import Image

    from depthlib.training.records import curves_png, samples_grid

    rows = [{"step": s, "loss": 1.0 / s, "ssi": 0.5 / s, "gm": 0.2 / s, "lr": 1e-4} for s in (10, 20, 30)]
    rows.append({"step": 30, "loss": 0.03, "lr": 1e-4, "val_abs_rel": 0.3, "val_d1": 0.6})
    png = Image.open(io.BytesIO(curves_png(rows, "t")))
    assert png.size[0] > 600 and png.size[1] > 200
    image = np.zeros((14, 28, 3), np.uint8)
    depth = np.linspace(1, 5, 14 * 28).reshape(14, 28)
    grid = samples_grid([image, image], [1 / depth, 1 / depth], [depth, depth], [depth > 2, depth > 0], metric=False)
    assert grid.shape == (28, 84, 3)
    metric = samples_grid([image], [depth * 2], [depth], [depth > 0], metric=True)
    # one colour scale: the prediction (twice the depth) is darker than the target almost everywhere
    assert metric[:, 28:56].astype(int).sum() < metric[:, 56:].astype(int).sum()


def test_normalised_targets_weigh_every_image_the_same():
    from depthlib.training.objectives import normalise_disparity

    _, target, mask = _maps(4, b=2)
    scaled = target.clone()
    scaled[1] *= 50.0  # a scene 50x nearer: 50x the disparity
    norm = normalise_disparity(scaled, mask)
    torch.testing.assert_close(norm, normalise_disparity(target, mask))  # per-image scale removed
    pred = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(9))
    per_image = relative_depth_loss(pred, norm, mask, reduction="none")["loss"]
    same = relative_depth_loss(pred, normalise_disparity(target, mask), mask, reduction="none")["loss"]
    torch.testing.assert_close(per_image, same)  # the 50x image does not weigh 50x
    torch.testing.assert_close(normalise_disparity(torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool)),
                               torch.ones(1, 4, 4))  # no spread: unchanged


def test_gradient_matching_weight_ramps_in_over_the_first_steps():
    from depthlib.losses import relative_depth_loss
    from depthlib.training.objectives import normalise_disparity

    torch.manual_seed(0)
    model = build_model("tiny")
    images = torch.randn(2, 3, 56, 56)
    target = torch.rand(2, 56, 56) + 0.1
    mask = torch.ones(2, 56, 56, dtype=torch.bool)
    batch = {"target": target, "mask": mask, "region": torch.zeros(2, 56, 56, dtype=torch.uint8)}
    objective = RelativeObjective(gm_ramp_steps=100)
    with torch.no_grad():
        pred = model(images)
    plain = relative_depth_loss(pred, normalise_disparity(target, mask), mask)
    for step, weight in ((0, 0.0), (50, 1.0), (100, 2.0), (5000, 2.0)):
        objective.at_step(step)
        with torch.no_grad():
            terms = objective(model, images, batch)
        torch.testing.assert_close(terms["loss"], plain["ssi"] + weight * plain["gm"])
    assert RelativeObjective().gm_weight == 2.0  # no ramp: the paper's 1:2 from the start
