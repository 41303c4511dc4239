"""The training job on the shared local Ray cluster: 2 CPU workers (gloo), real data, real failures.

Learning is measured on held-out scenes the model never saw, against the
untrained model and constant predictions (the issue's bounds). Recovery is
exercised for real: an injected worker failure, a SIGKILLed driver, a
finished run re-run, settings changed on resume, corrupt rows, and
checkpoints in a local directory and on ``gs://`` (the GCS emulator fixture).
Checkpoints on the S3 server fixture, a lost node and a longer re-run:
``test_training_multinode.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from depthlib import shards, storage
from depthlib.evaluation.protocol import Protocol, score, valid_pixels
from depthlib.inference import predict_images
from depthlib.models import build_model, load_released, load_state_dict_file, released_bytes
from depthlib.training.config import PRESETS, TrainConfig
from depthlib.training.data import ERRORS_DIR, load_validation_rows
from depthlib.training.job import RUN_NAME, TrainingInputError, run_training

ROOT = Path(__file__).resolve().parents[1]
CROP = 126
RELATIVE = Protocol(0.1, 100.0, "disparity")  # the issue: depth capped to 0.1-100 m


def _render(ray_session, output: str, count: int, size: str, seed: int, style: str, fmt: str = "shards") -> str:
    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic

    make_synthetic(MakeSyntheticConfig(output=output, count=count, size=size, seed=seed, style=style, format=fmt,
                                       scenes_per_task=64), progress=False)
    return storage.join(output, "shards" if fmt == "shards" else "images")


@pytest.fixture(scope="module")
def data(ray_session, tmp_path_factory):
    """Synthetic training scenes, held-out synthetic and photo-style scenes with
    exact depth, a bucket of photo-style JPEGs (the stand-in for real photos),
    and street scenes from one driving rig (the metric set) with their held-out part."""
    root = str(tmp_path_factory.mktemp("training_data"))
    return {
        "synthetic": _render(ray_session, f"{root}/syn_train", 384, f"{CROP}x{CROP}", 0, "synthetic"),
        "synthetic_val": _render(ray_session, f"{root}/syn_val", 64, f"{CROP}x{CROP}", 1, "synthetic"),
        "photo_val": _render(ray_session, f"{root}/photo_val", 48, f"{CROP}x168", 2, "photo"),
        "bucket": _render(ray_session, f"{root}/bucket", 160, f"{CROP}x168", 3, "photo", fmt="images"),
        "street": _render(ray_session, f"{root}/street_train", 384, f"{CROP}x{CROP}", 4, "street"),
        "street_val": _render(ray_session, f"{root}/street_val", 64, f"{CROP}x{CROP}", 5, "street"),
        "root": root,
    }


def _config(**kw) -> TrainConfig:
    base = dict(PRESETS["tiny_cpu"], stage="teacher", workers=2, batch_size=8, crop=CROP, max_failures=0)
    base.update(kw)
    return TrainConfig(**base)


def _evaluate(model: torch.nn.Module, val_uri: str, protocol: Protocol,
              keys: tuple[str, ...] = ("abs_rel", "d1")) -> dict[str, float]:
    """Mean of per-image metrics (AbsRel, delta1, ...) over held-out images with the evaluation protocol."""
    out = {k: [] for k in keys}
    for row in load_validation_rows(val_uri, 1000):
        image, depth, valid = row.decode()
        gt, mask = torch.from_numpy(depth), torch.from_numpy(valid)
        if not bool(valid_pixels(gt, mask, protocol).any()):
            continue
        pred = predict_images(model, [image], input_size=CROP, dtype="fp32", sizes=[depth.shape])[0]
        m = score(torch.from_numpy(pred)[None], gt[None], mask[None], protocol)
        for k in out:
            out[k].append(float(m[k][0]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _constant_baselines(val_uri: str, protocol: Protocol) -> dict[str, float]:
    """AbsRel of constant predictions: the constant under the protocol (aligned
    per image), and per image the best constant depth for AbsRel (the 1/gt
    weighted median), a stronger baseline than any fixed constant."""
    protocol_const, oracle = [], []
    for row in load_validation_rows(val_uri, 1000):
        _, depth, valid = row.decode()
        gt, mask = torch.from_numpy(depth), torch.from_numpy(valid)
        vp = valid_pixels(gt, mask, protocol)
        if not bool(vp.any()):
            continue
        protocol_const.append(float(score(torch.ones_like(gt)[None], gt[None], mask[None], protocol)["abs_rel"][0]))
        g = np.sort(gt[vp].double().numpy())
        w = np.cumsum(1.0 / g)
        c = g[min(np.searchsorted(w, w[-1] / 2), len(g) - 1)]
        oracle.append(float(np.mean(np.abs(c - g) / g)))
    return {"protocol_constant": float(np.mean(protocol_const)), "oracle_constant": float(np.mean(oracle))}


def _rows(output: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(storage.join(output, "metrics.jsonl")).decode().splitlines()]


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("teacher") / "run")
    cfg = _config(data=[data["synthetic"]], val_data=data["synthetic_val"], output=output, steps=300)
    summary = run_training(cfg, start_retries=0)
    return {"output": output, "summary": summary, "model": storage.join(output, "model.pth")}


@pytest.mark.slow
def test_teacher_learns_on_held_out_synthetic_scenes(data, teacher):
    torch.manual_seed(0)
    untrained = _evaluate(build_model("tiny").eval(), data["synthetic_val"], RELATIVE)
    consts = _constant_baselines(data["synthetic_val"], RELATIVE)
    trained = _evaluate(load_released(teacher["model"], "tiny"), data["synthetic_val"], RELATIVE)
    print(f"\nteacher held-out synthetic: untrained {untrained}, constants {consts}, trained {trained}")
    assert trained["abs_rel"] < 0.75 * untrained["abs_rel"]
    # The best constant PREDICTION under the protocol: every constant aligns to the same fit.
    assert trained["abs_rel"] < 0.75 * consts["protocol_constant"]
    # Reported, not bounded: a per-image constant chosen knowing the ground truth is an oracle.
    print(f"teacher / per-image oracle constant: {trained['abs_rel'] / consts['oracle_constant']:.3f}")
    assert trained["d1"] > untrained["d1"]
    # The job's own validation used the same protocol on the same scenes.
    final = teacher["summary"]["final"]
    assert final["val_abs_rel"] == pytest.approx(trained["abs_rel"], rel=1e-3)


def test_teacher_run_outputs(teacher):
    out = teacher["output"]
    rows = _rows(out)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 300 and steps[:2] == [0, 10]
    for r in rows[1:]:
        assert {"step", "time", "loss", "ssi", "gm", "pred_zero", "grad_norm", "lr", "images_per_s"} <= set(r)
    val = [r for r in rows if "val_abs_rel" in r]
    # step 0: the untrained model, and the held-out set's image-blind layout prior
    assert [r["step"] for r in val] == [0, 100, 200, 300] and all("val_d1" in r for r in val)
    assert rows[0]["val_layout_prior_abs_rel"] > 0
    verdict = json.loads(storage.read_bytes(storage.join(out, "run_state.json")))["learning"]
    print(f"\nteacher learning verdict: {verdict}")
    assert verdict["learned"] and verdict["basis"] == "val_abs_rel" and rows[-1]["learned"] == 1
    assert verdict["last"] == rows[-1]["val_abs_rel"] and verdict["start"] == rows[0]["val_abs_rel"]
    assert rows[-1]["lr"] == 0.0 and max(r["lr"] for r in rows[1:]) == pytest.approx(2e-4, rel=0.05)
    config = json.loads(storage.read_bytes(storage.join(out, "config.json")))
    assert config["config"]["stage"] == "teacher" and config["global_batch"] == 16
    for name in ("curves.png", "samples/step-00000000.png", "samples/step-00000300.png", "data_index.json",
                 "run_state.json"):
        assert storage.exists(storage.join(out, name)), name
    kept = sorted(p.name for p in Path(out, RUN_NAME).glob("step-*"))
    assert len(kept) <= 3 and "step-00000300" in kept
    # model.pth loads strictly in the released layout and is the final checkpoint's model
    model = load_released(teacher["model"], "tiny")
    from depthlib.training.state import read_checkpoint_dir

    state, model_state, *_ = read_checkpoint_dir(str(Path(out, RUN_NAME, "step-00000300")), "tiny")
    assert state.step == 300 and [r["step"] for r in state.history] == steps
    ckpt_model = build_model("tiny")
    ckpt_model.load_state_dict(model_state)
    x = torch.randn(2, 3, CROP, CROP)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ckpt_model.eval()(x))
        assert not torch.allclose(model(x), build_model("tiny").eval()(x))


def test_a_run_with_a_dead_output_is_flagged_as_not_learning(data, tmp_path):
    """A broken setup that finishes normally and says so: a start whose relative
    head outputs 0 everywhere (its final ReLU below zero) passes no gradient, so
    nothing moves. Measured on these scenes, weaker breakages still improve on
    the random start: labels shuffled against their images by 24% (the model
    learns the scenes' average layout), labels replaced by noise by 12% (haze
    makes brightness a depth cue); the 5% margin does not flag them."""
    model = build_model("tiny")
    torch.nn.init.constant_(model.depth_head.scratch.output_conv2[2].bias, -50.0)
    start = tmp_path / "dead.pth"
    start.write_bytes(released_bytes(model.state_dict(), "tiny"))
    output = str(tmp_path / "dead")
    cfg = _config(data=[data["synthetic"]], val_data=data["synthetic_val"], output=output, steps=20,
                  val_every=1000, checkpoint_every=1000, val_limit=16, init_from=str(start))
    summary = run_training(cfg, start_retries=0)
    verdict = summary["learning"]
    rows = _rows(output)
    print(f"\ndead output: {verdict}")
    assert verdict["basis"] == "val_abs_rel" and not verdict["learned"] and rows[-1]["learned"] == 0
    assert all(r["pred_zero"] == 1.0 for r in rows if "pred_zero" in r)


@pytest.mark.parametrize("storage_root", [pytest.param("gcs", marks=pytest.mark.gcs)], indirect=True)
def test_deterministic_runs_give_the_same_model_bit_for_bit(data, tmp_path, storage_root):
    """``--deterministic``: two runs of one command, 2 workers, CutMix and colour
    augmentation on, the same weights exactly, the same metrics rows (but time
    and speed). The second run keeps its checkpoints on ``gs://`` (Ray Train's
    storage_path through a GcsFileSystem) and all its workers fail right after
    the checkpoint at step 8: the group restarts from the checkpoint in object
    storage, so equal weights also prove an exact resume from it.
    (Measured once with a third, uninterrupted run: equal too.)"""
    def run(output: str, **kw) -> tuple[dict, list[dict]]:
        cfg = _config(data=[data["synthetic"]], output=output, steps=16, log_every=4, checkpoint_every=8,
                      val_every=1000, deterministic=True, cutmix=True, color_jitter=True, rows_per_group=16, **kw)
        assert run_training(cfg, start_retries=0)["finished_step"] == 16
        weights = torch.load(io.BytesIO(storage.read_bytes(storage.join(output, "model.pth"))), weights_only=True)
        rows = [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in _rows(output)]
        return weights, rows

    a, rows_a = run(str(tmp_path / "a"))
    remote = storage.join(storage_root.uri, "b")
    b, rows_b = run(remote, fail_at_step=8, max_failures=1)
    assert [r["step"] for r in rows_a] == [4, 8, 12, 16] and rows_b == rows_a  # resumed at 8: nothing redone or lost
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert storage.exists(storage.join(remote, "_injected_failure"))  # the failure really happened
    snapshot = json.loads(storage.read_bytes(storage.join(remote, RUN_NAME, "checkpoint_manager_snapshot.json")))
    assert "step-00000016" in json.dumps(snapshot)
    assert [o.key for o in storage.list_objects(storage.join(remote, RUN_NAME, "step-00000008"))], \
        "no checkpoint written to object storage"
    load_released(storage.join(remote, "model.pth"), "tiny")


@pytest.fixture(scope="module")
def pseudo_labels(ray_session, data, teacher, tmp_path_factory):
    from depthlib.pseudo_label import PseudoLabelConfig, run_pseudo_label

    output = str(tmp_path_factory.mktemp("pseudo"))
    summary = run_pseudo_label(PseudoLabelConfig(
        input=data["bucket"], output=output, checkpoint=teacher["model"], encoder="tiny", input_size=CROP,
        batch_size=8, partition_size=16, samples=0), log=lambda *_: None)
    assert summary["labelled"] == 160
    return storage.join(output, "labels")


@pytest.mark.slow
def test_student_on_pseudo_labels_gets_close_to_its_teacher(data, teacher, pseudo_labels, tmp_path):
    output = str(tmp_path / "student")
    # --deterministic: one fixed data order, so the bounds below hold for this run on every machine
    # rather than for most orders (issue #22's repeat runs: about 1 in 4 orders collapses)
    cfg = _config(stage="student", data=[pseudo_labels], val_data=data["photo_val"], output=output, steps=120,
                  cutmix=True, deterministic=True)
    run_training(cfg, start_retries=0)
    torch.manual_seed(0)
    untrained = _evaluate(build_model("tiny").eval(), data["photo_val"], RELATIVE)
    teacher_score = _evaluate(load_released(teacher["model"], "tiny"), data["photo_val"], RELATIVE)
    student = _evaluate(load_released(storage.join(output, "model.pth"), "tiny"), data["photo_val"], RELATIVE)
    print(f"\nheld-out photo-style: untrained {untrained}, teacher {teacher_score}, student {student}")
    assert student["abs_rel"] < 1.25 * teacher_score["abs_rel"]
    assert student["abs_rel"] < 0.8 * untrained["abs_rel"]
    assert all("feat" not in r for r in _rows(output))  # random start: no frozen encoder to align to


@pytest.mark.slow
def test_pretrain_stage_gives_the_encoder_teacher_and_student_start_from(data, pseudo_labels, tmp_path):
    """``--stage pretrain`` on the images of synthetic shards (labels unread)
    and on the bucket of unlabeled JPEGs (no shards: read as images), then a
    student that starts from its ``encoder.pth`` and aligns its features to
    it (the frozen encoder by default)."""
    from depthlib.models.masked_image import MaskedImageModel

    pre = str(tmp_path / "pretrain")
    summary = run_training(_config(stage="pretrain", data=[data["synthetic"], data["bucket"]], val_data=data["photo_val"],
                                   val_limit=8, output=pre, steps=30, val_every=30, checkpoint_every=30,
                                   log_every=10), start_retries=0)
    index = json.loads(storage.read_bytes(storage.join(pre, "data_index.json")))
    assert sum(map(sum, index["row_groups"])) == 384 + 160 and set(index["sources"]) == {0, 1}
    assert storage.exists(storage.join(pre, "image_plan", "source-001", "_plan", "meta.json"))
    rows = _rows(pre)
    train = [r for r in rows if "mim" in r]
    val = [r for r in rows if "val_mim" in r]
    assert [r["step"] for r in val] == [0, 30] and all(r["val_images"] == 8 for r in val)
    assert train[-1]["mim"] < 0.9 * train[0]["mim"]
    assert val[-1]["val_mim"] < val[0]["val_mim"]
    assert val[-1]["val_feature_spread"] > 0.0 and all("val_abs_rel" not in r for r in rows)
    assert summary["learning"]["basis"] == "loss" and summary["learning"]["learned"]
    assert storage.exists(storage.join(pre, "samples", "step-00000030.png"))
    assert storage.exists(storage.join(pre, "curves.png"))
    encoder = storage.join(pre, "encoder.pth")
    state = torch.load(encoder, weights_only=True)
    assert "mask_token" in state and not any(k.startswith(("pretrained.", "pixel_head")) for k in state)
    whole = MaskedImageModel("tiny")
    whole.load_state_dict(load_state_dict_file(storage.join(pre, "model.pth")), strict=True)
    assert torch.equal(whole.pretrained.state_dict()["blocks.3.mlp.fc2.weight"], state["blocks.3.mlp.fc2.weight"])

    student = str(tmp_path / "student")
    run_training(_config(stage="student", data=[pseudo_labels], output=student, steps=10, log_every=5,
                         pretrained_encoder=encoder), start_retries=0)
    rows = [r for r in _rows(student) if "loss" in r]
    # The alignment term is on and logged; it is 0 while the student's tokens stay
    # within the margin (cos > 0.85) of the encoder it started from.
    assert rows and all("feat" in r and 0.0 <= r["feat"] < 0.15 for r in rows)
    saved = json.loads(storage.read_bytes(storage.join(student, "config.json")))["config"]
    assert saved["pretrained_encoder"] == encoder and saved["frozen_encoder"] is None


@pytest.mark.slow
def test_metric_fine_tune_learns_metric_depth(data, teacher, tmp_path):
    """200 steps from the teacher on street scenes (one driving rig, as in Virtual
    KITTI 2), ``--max-depth 20``, scored in metres without alignment on held-out
    street scenes.

    The issue's bound: AbsRel below 0.8 x that of predicting the training set's
    median depth everywhere. Also below the per-pixel median depth of the
    training set (a fixed rig makes depth largely a function of the image row;
    beating that prior shows the model reads the image), and far below the
    fresh metric model. On the teacher's own scenes, whose camera height and
    field of view are random, metric scale is not in the image and the same
    fine-tune only reaches ~0.97 x the median constant (docs/training.md)."""
    output = str(tmp_path / "metric")
    cfg = _config(stage="metric", data=[data["street"]], val_data=data["street_val"], output=output,
                  steps=200, init_from=teacher["model"], max_depth=20.0)
    run_training(cfg, start_retries=0)
    protocol = Protocol(cfg.min_depth, cfg.max_depth, "none")
    decoded = [row.decode() for row in load_validation_rows(data["street"], 1000)]
    in_range = [valid & (depth > cfg.min_depth) & (depth < cfg.max_depth) for _, depth, valid in decoded]
    train_depths = np.concatenate([depth[keep] for (_, depth, _), keep in zip(decoded, in_range)])
    median = float(np.median(train_depths))
    assert config_of(output)["head_start_depth"] == pytest.approx(median, rel=0.15)  # from the first rows
    stacked = np.stack([np.where(keep, depth, np.nan) for (_, depth, _), keep in zip(decoded, in_range)])
    with np.errstate(all="ignore"):
        per_pixel = np.nanmedian(stacked, axis=0)
    per_pixel = torch.from_numpy(np.where(np.isfinite(per_pixel), per_pixel, median).astype(np.float32))

    class Fixed(torch.nn.Module):
        """Predicts the same depth map (metres, at the set's resolution) for every image."""

        def __init__(self, depth: torch.Tensor):
            super().__init__()
            self.register_buffer("depth", depth)
            self.unused = torch.nn.Parameter(torch.zeros(1))  # inference reads the device off a parameter

        def forward(self, x):
            return self.depth.expand(x.shape[0], *self.depth.shape)

    keys = ("abs_rel", "d1", "silog")
    torch.manual_seed(0)
    fresh = _evaluate(build_model("tiny", metric=True, max_depth=20.0).eval(), data["street_val"], protocol, keys)
    constant = _evaluate(Fixed(torch.full(per_pixel.shape, median)), data["street_val"], protocol, keys)
    prior = _evaluate(Fixed(per_pixel), data["street_val"], protocol, keys)
    metric = _evaluate(load_released(storage.join(output, "model.pth"), "tiny", metric=True, max_depth=20.0),
                       data["street_val"], protocol, keys)
    print(f"\nmetric held-out street (metres, no alignment): fresh {fresh}, median {median:.2f} m -> {constant}, "
          f"per-pixel median -> {prior}, model {metric}; AbsRel / median constant's "
          f"{metric['abs_rel'] / constant['abs_rel']:.3f} (issue: < 0.8), / per-pixel median's "
          f"{metric['abs_rel'] / prior['abs_rel']:.3f}")
    assert metric["abs_rel"] < 0.8 * constant["abs_rel"]
    assert metric["abs_rel"] < prior["abs_rel"]  # measured 0.89x; SiLog and delta1 are close to the prior's
    assert metric["abs_rel"] < 0.5 * fresh["abs_rel"] and metric["silog"] < 0.75 * fresh["silog"]


def config_of(output: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(output, "config.json")))["config"]


def _corrupt_copy(src_uri: str, dst_dir: Path) -> tuple[str, dict[str, str]]:
    """The first shard of ``src_uri`` rewritten with one undecodable image and
    one damaged label; returns its directory and the bad keys with reasons."""
    first = shards.list_shards(src_uri)[0]
    rows = shards.read_shard(first).to_pylist()
    rows[3]["image"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 50
    rows[7]["depth"] = rows[7]["depth"][: len(rows[7]["depth"]) // 2]
    dst_dir.mkdir(parents=True)
    shards.write_shard(rows, str(dst_dir / "bad.parquet"))
    return str(dst_dir), {rows[3]["key"]: "image_", rows[7]["key"]: "label_corrupt"}


def test_injected_worker_failure_resumes_with_history_and_corrupt_rows_counted(data, tmp_path):
    """Also the large-model path: FSDP2 with activation checkpointing and gradient
    accumulation, its sharded state saved whole in checkpoints and restored after the
    failure (the steps themselves: test_training_parallel.py)."""
    bad_dir, bad = _corrupt_copy(data["synthetic"], tmp_path / "bad_shards")
    output = str(tmp_path / "fail")
    cfg = _config(data=[bad_dir], output=output, steps=30, log_every=5, checkpoint_every=10, val_every=1000,
                  fail_at_step=20, max_failures=1, rows_per_group=16, fsdp=True, activation_checkpointing=True,
                  batch_size=4, grad_accum=2)
    summary = run_training(cfg, start_retries=0)
    assert summary["finished_step"] == 30
    load_released(storage.join(output, "model.pth"), "tiny")  # strict: every tensor gathered whole
    failed_at = os.path.getmtime(Path(output, "_injected_failure"))
    rows = _rows(output)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    # rows up to the checkpoint at 20 come from the first attempt; the rest after the restart
    assert all(r["time"] <= failed_at for r in rows[:4]) and all(r["time"] > failed_at for r in rows[4:])
    errors = {r["key"]: r["reason"] for r in shards_table(storage.join(output, ERRORS_DIR))}
    assert set(errors) == set(bad)
    assert all(errors[k].startswith(v) for k, v in bad.items())
    assert summary["data_rows_skipped"] == 2 and rows[-1]["data_skipped"] >= 2
    # a finished run re-run reports and exits; other settings are refused
    again = run_training(cfg, start_retries=0)
    assert again["finished_step"] == 30 and len(_rows(output)) == 6
    with pytest.raises(TrainingInputError, match="other settings"):
        run_training(_config(**{**cfg.to_dict(), "lr": 1e-3}), start_retries=0)


def test_bad_input_is_refused_before_any_worker_starts(ray_session, data, tmp_path):
    disparity = tmp_path / "disparity"
    row = shards.read_shard(shards.list_shards(data["synthetic"])[0]).slice(0, 1).to_pylist()[0]
    shards.write_shard([shards.make_row("k", row["image"], row["image_format"], np.ones((8, 8), np.float32),
                                        depth_type="disparity", kind="pseudo")], str(disparity / "p.parquet"))
    cases = [({"data": [str(tmp_path / "empty")]}, "no .parquet shards under"),
             ({"stage": "metric", "data": [str(disparity)]}, r"holds \['disparity'\] labels; the metric stage"),
             ({"init_from": str(tmp_path / "missing.pth")}, "--init-from .*missing.pth does not exist"),
             ({"val_data": str(tmp_path / "empty")}, "no .parquet shards under")]
    for kw, match in cases:
        cfg = _config(**{"data": [data["synthetic"]], "output": str(tmp_path / "out"), "steps": 2, **kw})
        with pytest.raises(TrainingInputError, match=match):
            run_training(cfg, start_retries=0)
    assert not (tmp_path / "out" / "config.json").exists()  # nothing written for a refused run
    # from the command line: one line naming the setting, exit status 2, no traceback
    bad = subprocess.run([sys.executable, str(ROOT / "ray_jobs/train.py"), "--stage", "teacher", "--data", "d",
                          "--output", str(tmp_path / "o"), "--encoder", "vitz"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("train.py: error: --encoder must be one of")


def shards_table(uri: str) -> list[dict]:
    import pyarrow.dataset as pads

    return pads.dataset(uri, format="parquet").to_table().to_pylist()


def test_killed_driver_rerun_resumes(ray_session, data, tmp_path):
    import ray

    output = str(tmp_path / "killed")
    args = ["--preset", "tiny_cpu", "--stage", "teacher", "--data", data["synthetic"], "--output", output,
            "--workers", "2", "--steps", "30", "--log-every", "5", "--checkpoint-every", "10", "--val-every", "1000",
            "--max-failures", "0"]
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs/train.py"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        # killed once Ray Train has registered the checkpoint at step 10 (the snapshot it resumes from);
        # a checkpoint written but not yet registered is not resumed from, and its steps are redone
        snapshot = Path(output, RUN_NAME, "checkpoint_manager_snapshot.json")
        while not (snapshot.exists() and "step-00000010" in snapshot.read_text()):
            assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before a checkpoint"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = time.time()
    assert not Path(output, "model.pth").exists()
    same = _config(data=[data["synthetic"]], output=output, steps=30, log_every=5, checkpoint_every=10,
                   val_every=1000, preset="tiny_cpu")
    summary = run_training(same, start_retries=0)
    assert summary["finished_step"] == 30
    rows = _rows(output)
    steps = [r["step"] for r in rows]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert rows[1]["time"] < killed_at  # the checkpointed steps were not redone
