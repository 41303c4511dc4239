"""The self-supervised pretraining stage's pieces without Ray: the masked-patch
loss against hand-computed cases, masks, the collapse gauge, the objective
learning on a fixed batch, and the encoder checkpoint read back strictly by
``--pretrained-encoder`` and ``--frozen-encoder``. The stage on Ray Train:
``tests/test_training_job.py::test_pretrain_stage_gives_the_encoder_teacher_and_student_start_from``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthlib.losses import feature_spread, masked_patch_loss, patchify, random_patch_masks
from depthlib.models import build_model
from depthlib.models.masked_image import MaskedImageModel, encoder_release_state
from depthlib.training.examples import ExampleSpec, make_example
from depthlib.training.objectives import STAGES, MaskedImageObjective, build_stage_model
from depthlib.training.weights import frozen_encoder, initialise
from depthlib.transforms import normalize
from depthlib.visualize import feature_pca_rgb, features_grid


def test_patchify_orders_patches_row_major_and_pixels_row_column_channel():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 6, 12)
    # patch 4 of image 1 = grid row 1, column 1: rows 2-3, columns 2-3
    expected = x[1, :, 2:4, 2:4].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(p[1, 4], expected)
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 3, 5, 4), 2)


def test_masked_patch_loss_hand_cases():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 28, 28)
    target = patchify(images, 14)
    norm = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    masks = torch.tensor([[True, False, False, True], [False, False, False, True]])
    # a perfect prediction of the normalised pixels scores 0
    assert float(masked_patch_loss(norm, images, masks, 14)) < 1e-10
    # zero prediction: the mean square of a normalised patch, (n - 1) / n with the unbiased variance
    n = 14 * 14 * 3
    zero = masked_patch_loss(torch.zeros_like(norm), images, masks, 14)
    assert abs(float(zero) - (n - 1) / n) < 1e-4
    # only hidden patches count: spoiling the visible ones changes nothing, and gets no gradient
    pred = norm.clone()
    pred[~masks] += 5.0
    pred.requires_grad_(True)
    loss = masked_patch_loss(pred, images, masks, 14)
    loss.backward()
    assert float(loss.detach()) < 1e-10 and float(pred.grad[~masks].abs().max()) == 0.0
    # one hidden patch off by 1 everywhere: its squared error 1 over 3 hidden patches
    pred = norm.clone()
    pred[0, 0] += 1.0
    assert abs(float(masked_patch_loss(pred, images, masks, 14)) - 1 / 3) < 1e-5
    # nothing hidden: 0, still connected to the graph
    p = torch.zeros_like(norm, requires_grad=True)
    none = masked_patch_loss(p, images, torch.zeros_like(masks), 14)
    none.backward()
    assert float(none) == 0.0 and p.grad is not None
    # the target's colour and contrast per patch do not matter (normalised per patch)
    torch.testing.assert_close(masked_patch_loss(norm, 3 * images + 2, masks, 14), torch.tensor(0.0),
                               atol=1e-8, rtol=0)


def test_random_patch_masks_hide_an_exact_share_reproducibly():
    m = random_patch_masks(5, 81, 0.6, generator=torch.Generator().manual_seed(3))
    assert m.dtype == torch.bool and m.shape == (5, 81)
    assert m.sum(1).tolist() == [49] * 5  # round(0.6 * 81)
    assert torch.equal(m, random_patch_masks(5, 81, 0.6, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(m[0], m[1])
    assert random_patch_masks(2, 4, 0.99).sum(1).tolist() == [3, 3]  # at least one patch stays visible
    with pytest.raises(ValueError):
        random_patch_masks(1, 4, 1.0)


def test_feature_spread_is_zero_for_a_collapsed_encoder():
    same = torch.randn(1, 9, 16).expand(4, 9, 16)
    assert float(feature_spread(same)) == 0.0
    a = torch.zeros(2, 3, 2)
    a[1] = 2.0  # pooled features 0 and 2 in every channel: std sqrt(2)
    assert abs(float(feature_spread(a)) - 2 ** 0.5) < 1e-6


def _photo_batch(n: int = 8, crop: int = 126) -> torch.Tensor:
    """``n`` rendered photo-style scenes as the stage sees them (normalised crops)."""
    from depthlib.synthetic import render_scene

    spec = ExampleSpec(target="none", crop=crop)
    rng = np.random.default_rng(0)
    images = []
    for seed in range(n):
        scene = render_scene(seed, crop, 168, style="photo")
        ex = make_example(scene.image, scene.depth, scene.valid, spec, rng, depth_type="metric_depth")
        assert ex["mask"].all() and not ex["target"].any()  # target "none": labels unread, image valid
        images.append(torch.from_numpy(ex["image"]))
    return normalize(torch.stack(images).float() / 255.0)


def test_pretraining_objective_learns_a_fixed_batch_without_collapse():
    torch.manual_seed(0)
    images = _photo_batch()
    model = build_stage_model(STAGES["pretrain"], "tiny", 20.0)
    assert isinstance(model, MaskedImageModel)
    objective = MaskedImageObjective(0.6)
    batch = {"mask": torch.ones(len(images), 126, 126, dtype=torch.bool)}
    with torch.no_grad():
        spread_init = float(feature_spread(model.features(images)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        terms = objective(model, images, batch)
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    with torch.no_grad():
        spread_end = float(feature_spread(model.features(images)))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"\nmasked loss {first:.3f} -> {last:.3f}; feature spread {spread_init:.4f} -> {spread_end:.4f}")
    assert last < 0.75 * first
    assert spread_end > spread_init  # no collapse: images differ more in feature space than at init


def test_placeholder_rows_hide_nothing_and_add_nothing():
    torch.manual_seed(0)
    images = _photo_batch(4)
    model = MaskedImageModel("tiny")
    mask = torch.ones(4, 126, 126, dtype=torch.bool)
    mask[2:] = False  # rows 2 and 3 did not decode
    torch.manual_seed(1)
    mixed = MaskedImageObjective(0.6)(model, images, {"mask": mask})
    torch.manual_seed(1)
    masks = random_patch_masks(4, 81, 0.6)
    pixels, _ = model(images, masks & mask.flatten(1).any(1)[:, None])
    expected = masked_patch_loss(pixels[:2], images[:2], masks[:2], 14)
    torch.testing.assert_close(mixed["loss"], expected)


def test_encoder_checkpoint_loads_strictly_as_pretrained_and_frozen_encoder(tmp_path):
    torch.manual_seed(0)
    model = MaskedImageModel("tiny")
    with torch.no_grad():
        model.mask_embedding.fill_(0.5)
    state = encoder_release_state(model.state_dict(), "tiny")
    assert "mask_token" in state and "cls_token" in state and not any(k.startswith(("pretrained.", "pixel_head"))
                                                                       for k in state)
    assert torch.equal(state["mask_token"], torch.full((1, 64), 0.5))
    path = tmp_path / "encoder.pth"
    torch.save(state, path)

    depth = build_model("tiny")
    assert initialise(depth, None, str(path), encoder_only=False) == str(path)
    for k, v in model.pretrained.state_dict().items():
        if k != "mask_token":
            assert torch.equal(depth.pretrained.state_dict()[k], v), k
    frozen = frozen_encoder(str(path), "tiny")
    assert not any(p.requires_grad for p in frozen.parameters())
    torch.testing.assert_close(frozen.state_dict()["blocks.0.attn.qkv.weight"],
                               model.pretrained.state_dict()["blocks.0.attn.qkv.weight"])
    # strict both ways: a missing or an extra key is named
    missing = dict(state)
    del missing["blocks.1.norm1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="blocks.1.norm1.weight"):
        initialise(build_model("tiny"), None, str(tmp_path / "missing.pth"), encoder_only=False)
    torch.save(state | {"blocks.9.extra": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="blocks.9.extra"):
        frozen_encoder(str(tmp_path / "extra.pth"), "tiny")
    # a whole pretraining model.pth (encoder and pixel head) is read as its encoder too
    torch.save(model.state_dict(), tmp_path / "model.pth")
    frozen_encoder(str(tmp_path / "model.pth"), "tiny")


def test_pca_picture_colours_features_alike_across_images():
    rng = np.random.default_rng(0)
    a = np.zeros((3, 4, 8))
    a[:, :2, 0] = 5.0  # left half differs in one direction
    b = a.copy()
    maps = feature_pca_rgb([a + rng.normal(0, 0.01, a.shape), b + rng.normal(0, 0.01, b.shape)])
    assert maps[0].shape == (3, 4, 3) and maps[0].dtype == np.uint8
    # the same feature gets the same colour in both images; left and right halves differ
    assert np.abs(maps[0][:, :2, 0].astype(int) - maps[1][:, :2, 0]).max() <= 20
    assert abs(int(maps[0][:, :2, 0].mean()) - int(maps[0][:, 2:, 0].mean())) > 100
    grid = features_grid([np.zeros((42, 56, 3), np.uint8)] * 2, [a, b])
    assert grid.shape == (84, 112, 3)


def _jpeg(seed: int, size=(60, 80)) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_unlabeled_images_are_pretraining_data_read_as_the_labelling_job_reads_them(tmp_path):
    """A ``--data`` prefix without shards: loose JPEGs, one file that is not an
    image, and a tar with PNG members beside a JSON member (SA-1B's layout)
    become items of the index (a frozen plan), and every image an example;
    the bad file and a file gone after the listing are recorded skips. Depth
    stages refuse such a prefix."""
    import io
    import tarfile

    from PIL import Image

    from depthlib.training import data as data_mod
    from depthlib.training.plan import GroupPlan

    bucket = tmp_path / "bucket"
    (bucket / "photos").mkdir(parents=True)
    for i in range(40):
        (bucket / "photos" / f"{i:03d}.jpg").write_bytes(_jpeg(i))
    (bucket / "photos" / "notes.jpg").write_bytes(b"this is not a picture")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(5):
            png = io.BytesIO()
            Image.fromarray(np.full((50, 70, 3), 40 * i, np.uint8)).save(png, format="PNG")
            for name, payload in ((f"sa_{i}.png", png.getvalue()), (f"sa_{i}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    (bucket / "sa_000000.tar").write_bytes(buf.getvalue())

    with pytest.raises(FileNotFoundError, match="--stage pretrain only"):
        data_mod.build_shard_index([str(bucket)])
    run = str(tmp_path / "run")
    index = data_mod.load_or_build_index(run, [str(bucket)], log_fn=lambda *_: None, images=True)
    assert index.n_rows == 46 and [sum(rg) for rg in index.row_groups] == [46]
    assert index.row_groups[0] == (32, 14) and not index.skipped

    (bucket / "photos" / "000.jpg").unlink()  # gone after the listing: a recorded read error
    spec = ExampleSpec(target="none", crop=42)
    plan = GroupPlan(index, seed=0, rows_per_group=32)
    errors = f"{run}/data_errors"
    batches = [data_mod.examples_of_group(plan, g, spec, errors) for g in range(plan.groups_per_epoch)]
    ok = np.concatenate([b["ok"] for b in batches])
    assert len(ok) == 46 and ok.sum() == 44
    for b in batches:
        assert b["image"].shape[1:] == (3, 42, 42) and not b["target"].any()
        assert (b["mask"][b["ok"] == 1] == 1).all() and (b["mask"][b["ok"] == 0] == 0).all()
    assert data_mod.count_data_errors(errors) == 2
    import pyarrow.parquet as pq

    recorded = {r["key"]: r["reason"] for f in (tmp_path / "run" / "data_errors").glob("*.parquet")
                for r in pq.read_table(f).to_pylist()}
    assert recorded == {"photos/notes.jpg": "image_not_an_image", "photos/000.jpg": "read_error"}

    # The plan is frozen: an image added later is not read by the run that listed the prefix.
    (bucket / "photos" / "zzz.jpg").write_bytes(_jpeg(99))
    again = data_mod.build_shard_index([str(bucket)], image_output=run)
    assert again.n_rows == 46


def test_ema_momentum_schedule_and_update():
    from depthlib.models.masked_image import ema_momentum, update_ema

    assert ema_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert ema_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert ema_momentum(100, 100, 0.996) == pytest.approx(1.0) and ema_momentum(500, 100, 0.996) == pytest.approx(1.0)
    torch.manual_seed(0)
    model = MaskedImageModel("tiny", "ema_features")
    assert not any(p.requires_grad for p in model.ema.parameters())
    with torch.no_grad():
        for p in model.pretrained.parameters():
            p.add_(1.0)
    w = model.pretrained.blocks[0].attn.qkv.weight
    e = model.ema.blocks[0].attn.qkv.weight
    before = e.clone()
    update_ema(model, 0.75)  # hand case: 0.75 * old + 0.25 * new
    torch.testing.assert_close(e, 0.75 * before + 0.25 * w)
    update_ema(model, 0.0)
    torch.testing.assert_close(e, w)
    # the targets: instance-normalised per image and channel over the patches, so every patch's
    # shared part is gone; a zero prediction scores about 1
    images = _photo_batch(2)
    t = model.targets(images)
    assert t.shape == (2, 81, model.pretrained.embed_dim) and not t.requires_grad
    torch.testing.assert_close(t.mean(1), torch.zeros(2, t.shape[-1]), atol=1e-4, rtol=0)


def test_ema_feature_objective_learns_a_fixed_batch_without_collapse():
    """The iBOT/data2vec-style target: the masked pass regresses the EMA
    encoder's tokens of the unmasked image. The loss falls while the EMA
    follows the encoder, and the features do not collapse."""
    torch.manual_seed(0)
    images = _photo_batch()
    model = build_stage_model(STAGES["pretrain"], "tiny", 20.0, "ema_features")
    objective = MaskedImageObjective(0.6, steps=60, ema_momentum=0.9)
    batch = {"mask": torch.ones(len(images), 126, 126, dtype=torch.bool)}
    with torch.no_grad():
        spread_init = float(feature_spread(model.features(images)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(60):
        objective.at_step(step)
        opt.zero_grad()
        terms = objective(model, images, batch)
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert model.ema.blocks[0].attn.qkv.weight.grad is None
    lag = (model.ema.blocks[0].attn.qkv.weight - model.pretrained.blocks[0].attn.qkv.weight).abs().max()
    assert 0 < float(lag) < 0.1  # the average follows the encoder, a little behind
    with torch.no_grad():
        spread_end = float(feature_spread(model.features(images)))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"\nmasked feature loss {first:.3f} -> {last:.3f}; feature spread {spread_init:.4f} -> {spread_end:.4f}")
    assert last < 0.75 * first
    assert spread_end > spread_init
