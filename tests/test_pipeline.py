"""The pipeline: stage decisions (pure), its configs and presets, DA-2K-style pairs, and the
end-to-end path a user takes: a token-authenticated ``ray start --head`` and ``ray job submit`` of
``ray_jobs/pipeline.py --preset smoke`` against the S3 server fixture, whose driver is killed after
the teacher and which the same command then resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from depthlib import storage
from depthlib.cli import parse_layered_config
from depthlib.pipeline import PRESETS, PipelineConfig, Stage, StageSettingsChanged, run_stages
from depthlib.pipeline import runner
from depthlib.pipeline.heldout import sample_pairs, smooth_valid, write_pairs
from depthlib.pipeline.stages import build_plan, relative
from fixtures_ray import TEST_RAY_ENV
from fixtures_s3 import all_backends

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("untrained", "teacher", "student_tiny", "metric")
SETS = ("synthetic", "photo", "street")
STAGE_NAMES = ["synthetic", "metric_data", "heldout", "bucket", "untrained", "pretrain_tiny", "teacher", "pseudo_labels",
               "student_tiny", "metric", "evaluate/untrained", "evaluate/teacher", "evaluate/student_tiny",
               "evaluate/metric"]


# --------------------------------------------------------------------------- the runner, with fake stages


class Fakes:
    """A chain a -> b -> c (+ d reading a; evaluate/x reading c) of stages that write a file and count calls."""

    def __init__(self, root: str):
        self.root = root
        self.calls: list[str] = []
        self.settings = {"a": {"n": 1}, "b": {"k": "x", "nested": {"p": 1}}, "c": {}, "d": {}, "evaluate/x": {}}
        self.fail: set[str] = set()
        self.skip_output: set[str] = set()

    def stages(self) -> list[Stage]:
        needs = {"a": (), "b": ("a",), "c": ("b",), "d": ("a",), "evaluate/x": ("c",)}

        def body(name):
            def run(log):
                self.calls.append(name)
                if name in self.fail:
                    raise RuntimeError(f"{name} interrupted")
                if name not in self.skip_output:
                    storage.write_bytes(storage.join(runner.stage_dir(self.root, name), "out.txt"), name.encode())
                return {"name": name}
            return run

        return [Stage(n, dict(self.settings[n]), body(n), ("out.txt",), needs[n]) for n in needs]

    def run(self, **kw):
        self.calls.clear()
        return run_stages(self.root, self.stages(), log=lambda *_: None, **kw)


def test_first_run_runs_every_stage_and_a_second_run_skips_them(tmp_path):
    f = Fakes(str(tmp_path))
    out = f.run()
    assert f.calls == ["a", "b", "c", "d", "evaluate/x"]
    assert {n: o.status for n, o in out.items()} == {n: "ran" for n in f.calls}
    rec = runner.read_record(f.root, "b")
    assert rec["complete"] is True and rec["settings"] == f.settings["b"] and rec["summary"] == {"name": "b"}
    assert rec["inputs"] == {"a": runner.digest(f.settings["a"])}
    assert (tmp_path / "evaluate" / "x" / "_stage.json").is_file()
    out = f.run()
    assert f.calls == [] and all(o.status == "skipped" for o in out.values())
    assert out["b"].summary == {"name": "b"}


def test_changed_settings_of_a_finished_stage_are_refused_before_anything_runs(tmp_path):
    f = Fakes(str(tmp_path))
    f.run()
    storage.delete(runner.record_uri(f.root, "a"))  # a would run again ...
    f.settings["b"]["nested"]["p"] = 2  # ... but b changed: nothing may run
    f.settings["c"]["new"] = True
    f.settings["c"]["added_unset"] = None  # a setting added later and left unset is no change
    with pytest.raises(StageSettingsChanged) as e:
        f.run()
    assert f.calls == []
    assert set(e.value.stages) == {"b", "c"}
    msg = str(e.value)
    assert "stage 'b' finished with other settings" in msg and "nested.p: was 1, now 2" in msg
    assert "new: was '(unset)', now True" in msg and "--rerun b c" in msg
    assert "added_unset" not in msg
    assert runner.digest({"x": 1, "y": {"z": None}}) == runner.digest({"x": 1}) != runner.digest({"x": 2})


def test_rerun_redoes_a_stage_and_what_reads_from_it_and_moves_old_outputs_aside(tmp_path):
    f = Fakes(str(tmp_path))
    f.run()
    f.settings["b"]["k"] = "y"
    out = f.run(rerun=["b"])
    assert f.calls == ["b", "c", "evaluate/x"]  # a and d (reading only a) are kept
    assert {n for n, o in out.items() if o.status == "rerun"} == {"b", "c", "evaluate/x"}
    assert runner.read_record(f.root, "b")["settings"]["k"] == "y"
    moved = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "_replaced").rglob("out.txt"))
    assert len(moved) == 3 and moved[0].startswith("_replaced/b-") and moved[1].startswith("_replaced/c-")
    assert moved[2].startswith("_replaced/evaluate/x-")
    # a group name re-runs every stage of the group; --discard-replaced deletes instead of moving
    f.run(rerun=["evaluate"], discard_replaced=True)
    assert f.calls == ["evaluate/x"] and len(list((tmp_path / "_replaced").rglob("out.txt"))) == 3
    with pytest.raises(ValueError, match="no such stage; the stages are: a, b, c, d, evaluate/x"):
        f.run(rerun=["teacher"])


@all_backends
def test_rerun_moves_old_outputs_aside_in_every_storage_backend(storage_root):
    f = Fakes(storage_root.uri)
    f.run()
    f.run(rerun=["c"])
    assert f.calls == ["c", "evaluate/x"]
    keys = [o.key for o in storage.list_objects(f.root)]
    moved = sorted(k for k in keys if k.startswith("_replaced/"))
    assert len(moved) == 4 and all(k.endswith(("/out.txt", "/_stage.json")) for k in moved)
    assert any(re.fullmatch(r"_replaced/c-\d{8}T\d{6}Z/out\.txt", k) for k in moved)
    assert storage.read_bytes(storage.join(f.root, "c", "out.txt")) == b"c"  # the new output
    assert runner.read_record(f.root, "c")["complete"] is True


def test_an_interrupted_stage_is_resumed_and_finished_ones_are_skipped(tmp_path):
    f = Fakes(str(tmp_path))
    f.fail = {"c"}
    with pytest.raises(RuntimeError, match="c interrupted"):
        f.run()
    assert f.calls == ["a", "b", "c"]
    rec = runner.read_record(f.root, "c")
    assert rec["complete"] is False and rec["pipeline_runs"] == 1
    f.fail = set()
    out = f.run()
    assert f.calls == ["c", "d", "evaluate/x"]
    assert out["a"].status == out["b"].status == "skipped" and out["c"].status == "resumed"
    assert runner.read_record(f.root, "c")["pipeline_runs"] == 2
    # an interrupted stage whose settings changed is refused too (its job would mix two runs)
    f.fail = {"d"}
    storage.delete(runner.record_uri(f.root, "d"))
    with pytest.raises(RuntimeError):
        f.run()
    f.settings["d"]["z"] = 1
    with pytest.raises(StageSettingsChanged, match="stage 'd' was started with other settings"):
        f.run()


def test_a_stage_without_its_outputs_is_not_marked_complete_and_lost_outputs_are_remade(tmp_path):
    f = Fakes(str(tmp_path))
    f.skip_output = {"b"}
    with pytest.raises(RuntimeError, match=r"stage 'b' returned without its outputs \['out.txt'\]"):
        f.run()
    assert runner.read_record(f.root, "b")["complete"] is False
    f.skip_output = set()
    f.run()
    (tmp_path / "d" / "out.txt").unlink()  # complete record, output gone: run it again
    f.run()
    assert f.calls == ["d"]


def test_stage_order_and_inputs_are_checked(tmp_path):
    run = lambda log: {}  # noqa: E731
    with pytest.raises(ValueError, match="reads from \\['b'\\], which do not run before it"):
        run_stages(str(tmp_path), [Stage("a", {}, run, needs=("b",)), Stage("b", {}, run)])
    with pytest.raises(ValueError, match="listed twice"):
        run_stages(str(tmp_path), [Stage("a", {}, run), Stage("a", {}, run)])


# --------------------------------------------------------------------------- configs and presets


def test_presets_build_every_stage_from_the_training_presets(tmp_path):
    from depthlib.training.config import PRESETS as TRAIN_PRESETS

    plan = build_plan(PipelineConfig(**PRESETS["demo"], storage=str(tmp_path / "demo")))
    assert [s.name for s in plan.stages] == STAGE_NAMES
    by = {s.name: s.settings for s in plan.stages}
    for name, steps in (("teacher", 400), ("student_tiny", 400), ("metric", 200)):
        s = by[name]
        assert s["steps"] == steps and s["workers"] == 2 and s["encoder"] == "tiny"
        for k, v in TRAIN_PRESETS["tiny_cpu"].items():  # the recipe is the training preset's, never copied
            if k not in ("val_every", "checkpoint_every", "log_every", "gpus_per_worker"):  # operational
                assert s[k] == v, k
    # the pretraining stage: the teacher's training images, labels unread; teacher and student start from
    # its encoder, and the student aligns its features to it (its frozen encoder defaults to its start)
    assert by["pretrain_tiny"]["stage"] == "pretrain" and by["pretrain_tiny"]["data"] == ["<storage>/synthetic/shards"]
    assert by["pretrain_tiny"]["steps"] == PRESETS["demo"]["pretrain_steps"] > 0
    for name in ("teacher", "student_tiny"):
        assert by[name]["pretrained_encoder"] == "<storage>/pretrain_tiny/encoder.pth", name
    assert by["student_tiny"]["frozen_encoder"] is None and by["metric"]["pretrained_encoder"] is None
    assert {s.name: s.needs for s in plan.stages}["teacher"][-1] == "pretrain_tiny"
    for on, data, needs in (("bucket", ["<storage>/bucket/images"], ("bucket", "heldout")),
                            ("both", ["<storage>/synthetic/shards", "<storage>/bucket/images"],
                             ("synthetic", "bucket", "heldout"))):
        other = build_plan(PipelineConfig(**{**PRESETS["demo"], "pretrain_on": on}, storage=str(tmp_path / on)))
        stage = {s.name: s for s in other.stages}["pretrain_tiny"]
        assert stage.settings["data"] == data and stage.needs == needs, on
    off = build_plan(PipelineConfig(**{**PRESETS["demo"], "pretrain_steps": 0}, storage=str(tmp_path / "off")))
    assert "pretrain_tiny" not in [s.name for s in off.stages]
    assert {s.name: s.settings for s in off.stages}["teacher"]["pretrained_encoder"] is None
    assert by["student_tiny"]["data"] == ["<storage>/pseudo_labels/labels"]
    assert by["student_tiny"]["val_data"] == "<storage>/heldout/photo/shards"
    assert by["metric"]["init_from"] == "<storage>/student_tiny/model.pth" and by["metric"]["max_depth"] == 20.0
    assert by["pseudo_labels"]["checkpoint"] == "<storage>/teacher/model.pth" and by["pseudo_labels"]["input_size"] == 126
    ev = by["evaluate/metric"]
    assert ev["metric"] is True and ev["max_depth"] == 20.0 and ev["checkpoint"] == "<storage>/metric/model.pth"
    assert by["metric"]["data"] == ["<storage>/metric_data/shards"] and by["metric_data"]["style"] == "street"
    assert by["metric"]["val_data"] == "<storage>/heldout/street/shards"
    assert ev["depth_range"] == [f"shards.{s}=0.001,20" for s in SETS]  # the metric model's own range
    assert by["evaluate/teacher"]["depth_range"] == [f"shards.{s}=0.1,100" for s in SETS]
    assert "da2k.heldout=<storage>/heldout/da2k" in ev["dataset"]
    # settings do not depend on where the storage is: a moved directory keeps its finished stages
    other = build_plan(PipelineConfig(**PRESETS["demo"], storage="s3://bucket/elsewhere"))
    assert [s.settings for s in other.stages] == [s.settings for s in plan.stages]

    gpu = build_plan(PipelineConfig(**PRESETS["gpu_vitl"], storage="s3://b/p", unlabeled="s3://b/photos",
                                    pretrained=["vits=s3://w/s.pth", "vitl=s3://w/l.pth"],
                                    train_set=["student.cutmix=false", "student_vitb.lr=1e-6", "teacher.steps=10"]))
    g = {s.name: s.settings for s in gpu.stages}
    assert "bucket" not in g and g["pseudo_labels"]["input"] == "s3://b/photos"
    assert g["metric_data"]["count"] == 20_000 and g["metric"]["data"] == ["<storage>/metric_data/shards"]
    assert "pretrain_vitl" not in g and "pretrain_vits" not in g  # DINOv2 given or no --pretrain-steps
    assert g["teacher"]["encoder"] == "vitl" and g["teacher"]["pretrained_encoder"] == "s3://w/l.pth"
    assert g["teacher"]["steps"] == 10 and g["teacher"]["lr"] == TRAIN_PRESETS["teacher_vitl"]["lr"]
    assert g["student_vits"]["pretrained_encoder"] == "s3://w/s.pth" and g["student_vitb"]["pretrained_encoder"] is None
    assert g["student_vitb"]["lr"] == 1e-6 and g["student_vits"]["lr"] == 5e-6
    assert g["student_vits"]["cutmix"] is False and g["student_vits"]["global_batch_size"] == 192
    assert g["metric"]["encoder"] == "vits" and g["metric"]["max_depth"] == 20.0  # metric_hypersim on the ViT-S student
    assert g["pseudo_labels"]["input_size"] == 518
    paper = build_plan(PipelineConfig(**PRESETS["paper"], storage="s3://b/p", unlabeled="s3://b/photos"))
    p = {s.name: s.settings for s in paper.stages}
    assert p["teacher"]["encoder"] == "vitg" and p["metric"]["init_from"] == "<storage>/student_vitl/model.pth"
    assert [n for n in p if n.startswith("student_")] == ["student_vits", "student_vitb", "student_vitl"]


@pytest.mark.parametrize("kw, match", [
    (dict(preset="gpu_vitl"), "give --unlabeled URI"),
    (dict(preset="demo", train_set=["teacher.bogus=1"]), "has no setting 'bogus'"),
    (dict(preset="demo", train_set=["lr=1"]), "STAGE.SETTING=VALUE"),
    (dict(preset="demo", train_set=["teacher.output=x"]), "the pipeline sets 'output' itself"),
    (dict(preset="demo", train_set=["teacher.lr=fast"]), "expected float, got 'fast'"),
    (dict(preset="demo", train_set=["student.cutmix=maybe"]), "expected true or false"),
    (dict(preset="demo", train_set=["teacher.optimizer=sgd"]), "choose one of ('adam', 'adamw')"),
    (dict(preset="demo", train_set=["student_vitb.lr=1"]), "not a student of this pipeline"),
    (dict(preset="demo", train_set=["metric.encoder=vits"]), "the metric stage's encoder is tiny"),
    (dict(preset="demo", teacher_preset="student_vits"), "is a student recipe, not a teacher one"),
    (dict(preset="demo", teacher_preset="nope"), "unknown training preset 'nope'"),
    (dict(preset="demo", student_presets=["tiny_cpu", "tiny_cpu"]), "two students with encoder tiny"),
    (dict(preset="demo", metric_from="vitb"), "no student with that encoder"),
    (dict(preset="demo", pretrained=["vitx=s3://a"]), "--pretrained takes ENCODER=URI"),
    (dict(preset="demo", benchmark=["da2k.heldout=s3://a"]), "the pipeline's own held-out sets"),
    (dict(preset="demo", heldout_size="12"), "--heldout-size must look like HxW"),
    (dict(preset="demo", pair_min_ratio=1.0), "--pair-min-ratio must be > 1"),
    (dict(preset="demo", input_size=100), "multiple of 14"),
])
def test_bad_settings_are_refused_with_the_setting_named(tmp_path, kw, match):
    preset = kw.pop("preset")
    with pytest.raises(ValueError, match=re.escape(match)):
        build_plan(PipelineConfig(**{**PRESETS[preset], **kw, "storage": str(tmp_path)}))


def test_command_line_layers_and_help():
    cfg = parse_layered_config(PipelineConfig, ["--preset", "smoke", "--storage", "s3://b/x", "--teacher-steps", "7",
                                                "--rerun", "teacher", "evaluate"], PRESETS)
    assert cfg.preset == "smoke" and cfg.teacher_steps == 7 and cfg.rerun == ["teacher", "evaluate"]
    assert cfg.synthetic_count == PRESETS["smoke"]["synthetic_count"]
    out = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "pipeline.py"), "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and "--rerun" in out.stdout and "demo" in out.stdout and "paper" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "pipeline.py"), "--preset", "paper", "--storage",
                          "s3://b/x"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert bad.returncode == 2 and "give --unlabeled URI" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "pipeline.py"), "--preset", "smoke", "--storage",
                          "s3://b/x", "--teacher-preset", "nope"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert bad.returncode == 2 and "unknown training preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_relative_settings_name_the_storage_not_its_location():
    root = "/data/run"
    assert relative({"a": "/data/run/x", "b": ["n=/data/run"], "c": "/data/runner", "d": 3}, root) == \
        {"a": "<storage>/x", "b": ["n=<storage>"], "c": "/data/runner", "d": 3}


# --------------------------------------------------------------------------- DA-2K-style pairs and the evaluation additions


def test_pairs_are_clear_orderings_away_from_edges():
    rng = np.random.default_rng(0)
    depth = np.full((40, 60), 10.0, np.float32)
    depth[:, 30:] = 2.0  # a wall 5x closer on the right
    depth[5:15, 5:15] = 4.0
    valid = np.ones_like(depth, bool)
    valid[:3] = False
    smooth = smooth_valid(depth, valid)
    assert not smooth[:, 29:31].any() and not smooth[:4].any() and smooth[20, 40] and smooth[20, 20]
    pairs = sample_pairs(depth, valid, 200, 1.2, rng)
    assert len(pairs) == 200
    firsts = 0
    for p in pairs:
        a, b = depth[tuple(p["point1"])], depth[tuple(p["point2"])]
        assert smooth[tuple(p["point1"])] and smooth[tuple(p["point2"])]
        assert max(a, b) > 1.2 * min(a, b)
        assert (a < b) == (p["closer_point"] == "point1")
        firsts += p["closer_point"] == "point1"
    assert 70 < firsts < 130  # which point comes first is random
    flat = np.full((20, 20), 3.0, np.float32)
    assert sample_pairs(flat, np.ones_like(flat, bool), 5, 1.2, rng) == []


def test_pairs_written_from_held_out_shards_are_read_by_the_da2k_layout(tmp_path):
    import torch

    from depthlib import shards
    from depthlib.evaluation.datasets import plan_dataset
    from depthlib.metrics import pair_accuracy
    from depthlib.synthetic_job import MakeSyntheticConfig, render_task

    sets = {}
    for i, style in enumerate(SETS):
        cfg = MakeSyntheticConfig(output=str(tmp_path / style), count=3, size="42x56", seed=i, style=style)
        render_task(cfg, 0)
        sets[style] = str(tmp_path / style / "shards")
    counts = write_pairs(sets, str(tmp_path / "da2k"), 6, 1.2, seed=0)
    assert counts == {s: {"images": 3, "pairs": 18} for s in SETS}
    plan = plan_dataset("da2k.heldout", str(tmp_path / "da2k"))
    assert plan.name == "da2k.heldout" and len(plan.samples) == 3 * len(SETS)
    assert {s["scene"] for s in plan.samples} == set(SETS)
    annotations = json.loads((tmp_path / "da2k" / "annotations.json").read_text())
    truth = {}
    for style, uri in sets.items():
        for f in shards.list_shards(uri):
            for row in shards.read_shard(f).to_pylist():
                s = shards.decode_sample(row)
                path = f"images/{style}/{s.key}.{'png' if style == 'synthetic' else 'jpg'}"
                assert (tmp_path / "da2k" / path).read_bytes() == row["image"]
                truth[path] = torch.from_numpy(np.where(s.valid, 1.0 / np.maximum(s.depth, 1e-6), 0.0))
    assert pair_accuracy(truth, annotations)["accuracy"] == 1.0  # exact disparity orders every pair right
    assert pair_accuracy({k: -v for k, v in truth.items()}, annotations)["accuracy"] == 0.0


def test_evaluation_takes_labelled_datasets_and_depth_ranges():
    from depthlib.evaluation.config import EvaluateConfig
    from depthlib.evaluation.datasets import DATASETS, DatasetPlan
    from depthlib.evaluation.job import dataset_protocol
    from depthlib.evaluation.report import render_markdown

    cfg = EvaluateConfig(checkpoint="m.pth", encoder="tiny", output="o",
                         dataset=["shards.a=x", "shards.b=y", "shards=z", "da2k.mine=w"],
                         depth_range=["shards.a=0.1,100"])
    assert cfg.datasets() == {"shards.a": "x", "shards.b": "y", "shards": "z", "da2k.mine": "w"}
    proto, record = dataset_protocol(cfg, DatasetPlan("shards.a", DATASETS["shards"], []))
    assert (proto.min_depth, proto.max_depth) == (record["min_depth"], record["max_depth"]) == (0.1, 100.0)
    proto, _ = dataset_protocol(cfg, DatasetPlan("shards.b", DATASETS["shards"], []))
    assert (proto.min_depth, proto.max_depth) == (DATASETS["shards"].min_depth, DATASETS["shards"].max_depth)
    for kw, match in [(dict(dataset=["shards.a b=x"]), "unknown dataset"),
                      (dict(dataset=["nope.a=x"]), "unknown dataset 'nope.a'"),
                      (dict(dataset=["shards=x"], depth_range=["nyu=0,1"]), "without a --dataset of that name"),
                      (dict(dataset=["shards=x"], depth_range=["shards=5,1"]), "need 0 <= MIN < MAX"),
                      (dict(dataset=["shards=x"], depth_range=["shards=a"]), "NAME=MIN,MAX"),
                      (dict(dataset=["da2k=x"], depth_range=["da2k=0,1"]), "it has no depth range")]:
        with pytest.raises(ValueError, match=re.escape(match)):
            EvaluateConfig(checkpoint="m.pth", encoder="tiny", output="o", **kw)
    entry = {"abs_rel": 0.1, "d1": 0.9, "n_images": 2, "n_errors": 0,
             "protocol": {"alignment": "disparity", "inference": "released path"},
             "worst": [], **{m: 0.1 for m in ("sq_rel", "rmse", "rmse_log", "log10", "silog", "d2", "d3")}}
    pairs = {"accuracy": 0.75, "n_pairs": 4, "n_images": 1, "n_errors": 0, "by_scene": {"photo": 0.75},
             "pairs_by_scene": {"photo": 4}, "protocol": {"inference": "released path"}, "worst": []}
    md = render_markdown({"checkpoint": "m", "encoder": "vits", "metric": False, "input_size": 518, "dtype": "fp32",
                          "finished_at": "t", "depthlib": "0", "wall_s": 1.0,
                          "datasets": {"shards.photo": entry, "nyu": entry, "da2k.heldout": pairs}})
    assert "| NYU-D AbsRel ↓ / δ1 ↑ | shards (photo) AbsRel ↓ / δ1 ↑ |" in md
    assert "## DA-2K (heldout) (layout of the paper's Table 3)" in md and "da2k.heldout/by_scene.png" in md


# --------------------------------------------------------------------------- on Ray: killed after the teacher, resumed


def _complete(root: Path, stage: str) -> bool:
    p = root / stage / "_stage.json"
    try:
        return json.loads(p.read_text()).get("complete") is True
    except (OSError, ValueError):
        return False


def _check_report(report: dict) -> None:
    assert list(report["models"]) == list(MODELS) and report["metric_from"] == "student_tiny"
    for m in MODELS:
        for s in SETS:
            row = report["models"][m][s]
            assert set(row) == {"abs_rel", "d1", "pair_accuracy"}
            assert row["abs_rel"] > 0 and 0 <= row["d1"] <= 1 and 0 <= row["pair_accuracy"] <= 1


# --------------------------------------------------------------------------- end to end, as a user would


def _free_ports(n: int) -> list[int]:
    from fixtures_s3 import free_ports

    return free_ports(n)


def _run(cmd: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET (status 0: nothing answers yet), never through a proxy."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def _http_status(url: str, token: str | None = None) -> int:
    return _get(url, token)[0]


def _kill_tree(proc: subprocess.Popen, marker: str) -> None:
    """Stop the head started by this test, by process ids only: its process group (``ray start
    --block`` and what it spawned), then any straggler whose command line names this test's own
    temporary directory. Never ``ray stop``, which kills every Ray process of the machine by name,
    including other test sessions' clusters."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    _kill_processes(marker)


def _kill_processes(marker: str) -> list[int]:
    """SIGKILL every process whose command line holds ``marker``; the pids killed."""
    killed = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed.append(int(pid_dir.name))
            except ProcessLookupError:
                pass
    return killed


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.timeout(1200)
def test_end_to_end_ray_job_submit_to_a_token_authenticated_head_driver_killed_and_resubmitted(s3_server):
    """The path a user takes, on S3: a pipeline job whose driver is killed right after the teacher, then
    the same ``ray job submit`` again, which skips the finished stages and completes the rest."""
    from depthlib.demo import DEMO_MODELS, demo_report

    ray_bin = str(Path(sys.executable).parent / "ray")
    # A short private directory (Ray's socket paths must stay short): the head's temp dir and a HOME
    # whose ~/.ray/auth_token is the token, as `ray get-auth-token --generate` makes it for a user.
    tmp = Path(tempfile.mkdtemp(prefix="dl-e2e-", dir="/tmp"))
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))} | TEST_RAY_ENV
    env.update(HOME=str(home), RAY_AUTH_MODE="token", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    gen = _run([ray_bin, "get-auth-token", "--generate"], env)
    assert gen.returncode == 0, gen.stderr
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 16
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env = _free_ports(7)
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={tmp / 'ray'}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", "--disable-usage-stats"],
        env=env, stdout=open(tmp / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while _http_status(f"{address}/api/version", token) != 200:
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.time() < deadline, "the dashboard did not answer"
            time.sleep(1)
        # token authentication is on: the REST API refuses a client without the token
        assert _http_status(f"{address}/api/jobs/") in (401, 403)
        assert _http_status(f"{address}/api/jobs/", token) == 200

        bucket = s3_server.new_bucket("e2e")
        storage_uri = f"s3://{bucket}/pipeline"
        runtime = {"env_vars": {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1",
                                "AWS_ACCESS_KEY_ID": s3_server.access_key_id,  # the fixture's test keys
                                "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key, "OMP_NUM_THREADS": "1"}}
        client_env = dict(env, RAY_AUTH_TOKEN=token)
        s3 = s3_server.client()

        def submit_job() -> str:
            submit = _run([ray_bin, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--no-wait",
                           "--runtime-env-json", json.dumps(runtime), "--", "python", "ray_jobs/pipeline.py",
                           "--preset", "smoke", "--storage", storage_uri, *FAST], client_env, timeout=300)
            assert submit.returncode == 0, submit.stdout + submit.stderr
            return re.search(r"(raysubmit_\w+)", submit.stdout + submit.stderr).group(1)

        # the smoke preset with one worker per training stage and fewer steps: every stage still runs (this
        # test checks the path, not the learning), with about a minute less of Ray Train start-up on 2 cores
        FAST = ["--pretrain-steps", "4", "--teacher-steps", "8", "--student-steps", "8", "--metric-steps", "4",
                *(a for s in ("pretrain", "teacher", "student", "metric") for a in (f"--{s}-workers", "1"))]

        def job_state(job_id: str) -> str:  # as the dashboard's Jobs page reads it
            code, body = _get(f"{address}/api/jobs/{job_id}", token)
            return json.loads(body)["status"] if code == 200 else ""

        def complete(stage: str) -> bool:
            try:
                body = s3.get_object(Bucket=bucket, Key=f"pipeline/{stage}/_stage.json")["Body"].read()
            except s3.exceptions.NoSuchKey:
                return False
            return json.loads(body).get("complete") is True

        # 1. the driver is killed (SIGKILL, no clean-up) as soon as the teacher stage has finished
        first = submit_job()
        deadline = time.time() + 600
        while not complete("teacher"):
            assert job_state(first) not in ("SUCCEEDED", "FAILED", "STOPPED"), "the job ended before the teacher"
            assert time.time() < deadline, "the teacher stage did not finish"
            time.sleep(0.5)
        killed = _kill_processes(f"ray_jobs/pipeline.py --preset smoke --storage {storage_uri}")
        assert killed, "no driver process found"
        deadline = time.time() + 120
        while job_state(first) not in ("FAILED", "STOPPED"):
            assert time.time() < deadline, job_state(first)
            time.sleep(1)
        assert not complete("student_tiny")
        teacher_model = s3.head_object(Bucket=bucket, Key="pipeline/teacher/model.pth")["ETag"]
        with pytest.raises(s3.exceptions.ClientError):
            s3.head_object(Bucket=bucket, Key="pipeline/report.json")

        # 2. the same command again: finished stages are skipped, the rest resumes or runs
        job_id = submit_job()
        deadline = time.time() + 900
        state = ""
        while time.time() < deadline:
            state = job_state(job_id)
            if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(1)
        status = _run([ray_bin, "job", "status", "--address", address, job_id], client_env)
        logs = _run([ray_bin, "job", "logs", "--address", address, job_id], client_env).stdout
        assert state == "SUCCEEDED", f"job {job_id}: {state or 'timed out'}\n{logs[-6000:]}"
        assert f"Job '{job_id}' succeeded" in status.stdout
        assert "[pipeline] results:" in logs and s3_server.secret_access_key not in logs

        # every stage's outputs and the final report, read back from S3
        keys = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="pipeline/"):
            keys |= {o["Key"][len("pipeline/"):] for o in page.get("Contents", [])}
        for name in STAGE_NAMES:
            assert complete(name), name
        for key in ("synthetic/summary.json", "metric_data/summary.json", "heldout/da2k/annotations.json",
                    "heldout/street/summary.json", "bucket/summary.json",
                    "teacher/model.pth", "pseudo_labels/summary.json", "student_tiny/model.pth", "metric/model.pth",
                    "report.json", "report.md", *(f"evaluate/{m}/report.json" for m in MODELS)):
            assert key in keys, key
        assert any(k.startswith("pseudo_labels/labels/") and k.endswith(".parquet") for k in keys)
        assert any(k.startswith("synthetic/shards/") and k.endswith(".parquet") for k in keys)

        def read_json(key: str) -> dict:
            return json.loads(s3.get_object(Bucket=bucket, Key=f"pipeline/{key}")["Body"].read())

        report = read_json("report.json")
        _check_report(report)
        baseline = report["metric_baseline"]  # the metric training data's median depth everywhere
        assert baseline["median_depth"] == read_json("metric/config.json")["config"]["head_start_depth"]
        assert set(baseline["sets"]) == set(SETS) and all(v["abs_rel"] > 0 for v in baseline["sets"].values())
        md = s3.get_object(Bucket=bucket, Key="pipeline/report.md")["Body"].read().decode()
        assert f"| constant {baseline['median_depth']:.2f} m |" in md
        # the layout priors: relative (as the training loop's validation computes it) and in metres
        layout = report["layout_prior"]
        assert set(layout) == {"relative", "metric"} and all(set(v) == set(SETS) for v in layout.values())
        teacher_rows = [json.loads(line) for line in s3.get_object(
            Bucket=bucket, Key="pipeline/teacher/metrics.jsonl")["Body"].read().decode().splitlines()]
        assert layout["relative"]["synthetic"]["abs_rel"] == pytest.approx(
            teacher_rows[0]["val_layout_prior_abs_rel"], rel=2e-3)  # the same held-out set, computed apart
        assert "| layout prior |" in md and "| layout prior (m) |" in md
        stages = {n: s["status"] for n, s in report["stages"].items()}
        assert list(stages) == STAGE_NAMES
        upto = STAGE_NAMES.index("teacher") + 1
        assert all(stages[n] == "skipped" for n in STAGE_NAMES[:upto]), stages
        assert stages["pseudo_labels"] in ("ran", "resumed") and stages["student_tiny"] == "ran"
        assert all(stages[n] == "ran" for n in STAGE_NAMES[STAGE_NAMES.index("metric"):]), stages
        assert s3.head_object(Bucket=bucket, Key="pipeline/teacher/model.pth")["ETag"] == teacher_model
        assert s3_server.secret_access_key not in json.dumps(report)
        labels = read_json("pseudo_labels/summary.json")
        assert labels["labelled"] == PRESETS["smoke"]["bucket_count"] and labels["skipped"] == 0
        ev = read_json("evaluate/metric/report.json")
        assert ev["metric"] is True and ev["datasets"]["shards.photo"]["protocol"]["alignment"] == "none"
        assert ev["datasets"]["shards.street"]["protocol"]["max_depth"] == 20.0  # the metric model's range
        ev = read_json("evaluate/teacher/report.json")
        assert ev["datasets"]["shards.photo"]["protocol"]["min_depth"] == 0.1
        assert ev["datasets"]["shards.photo"]["protocol"]["max_depth"] == 100.0
        assert ev["datasets"]["da2k.heldout"]["pairs_by_scene"] == {
            s: PRESETS["smoke"]["heldout_count"] * PRESETS["smoke"]["pairs_per_image"] for s in SETS}

        # the demo's contract layout from this report
        demo = demo_report(report, 12.5)
        assert set(demo) == {"models", "seconds"} and tuple(demo["models"]) == DEMO_MODELS
        assert demo["models"]["student"] == report["models"]["student_tiny"]
    finally:
        _kill_tree(head, str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
