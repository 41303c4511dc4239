"""GPU plans on a CPU machine: the session's Ray cluster declares one GPU.

Every job that asks Ray for a GPU runs here with its GPU settings: Ray
schedules its model actors on the declared GPU and hands them its id; with no
CUDA device the model then runs on the CPU. A plan a GPU cluster would refuse
(Ray Data's "You must provide batch_size to map_batches when requesting
GPUs", before any work) fails these tests. What only CUDA exercises is in
``test_gpu.py`` (marker ``gpu``); training's GPU plan (``use_gpu``, its
resources) in ``test_training_gpu_plan.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from depthlib import storage
from depthlib.pseudo_label import PseudoLabelConfig, run_pseudo_label
from depthlib.pseudo_label.stages import PASSES_PER_CALL, LabelActor, model_stage_args
from depthlib.pseudo_label.stand_in import stand_in_actor

SIZE = 70


@pytest.fixture(scope="module")
def bucket(ray_session, tmp_path_factory) -> str:
    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic

    out = str(tmp_path_factory.mktemp("gpu_bucket"))
    make_synthetic(MakeSyntheticConfig(output=out, count=24, size="84x112", seed=7, style="photo", format="images",
                                       scenes_per_task=12), progress=False)
    return storage.join(out, "images")


def _gpu_recording_actor(record: Path) -> type:
    """``LabelActor`` that writes the GPU ids Ray gave it and its torch device to ``record``."""

    class GpuRecordingLabelActor(LabelActor):
        def __init__(self, *args, **kwargs):
            import ray

            super().__init__(*args, **kwargs)
            record.write_text(json.dumps({"gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                                          "device": self.device.type}))

    return GpuRecordingLabelActor


def _keys(uri: str) -> list[str]:
    return pads.dataset(uri, format="parquet").to_table(columns=["key"]).column("key").to_pylist()


def test_the_labelling_job_asks_for_a_gpu_and_gets_it(ray_session, tmp_path, tiny_checkpoint, bucket):
    import ray

    assert ray.cluster_resources().get("GPU") == 1
    config = PseudoLabelConfig(input=bucket, output=str(tmp_path / "out"), checkpoint=tiny_checkpoint, encoder="tiny",
                               input_size=SIZE, batch_size=4, partition_size=8, keys_per_task=3, samples=0)
    args = model_stage_args(config, {})
    assert args["num_gpus"] == 1 and args["num_cpus"] == 1  # the default on a cluster with GPUs
    assert args["batch_size"] == 4 * PASSES_PER_CALL  # Ray Data refuses GPU actors without one
    record = tmp_path / "actor.json"
    summary = run_pseudo_label(config, log=lambda *_: None, actor_class=_gpu_recording_actor(record))
    seen = json.loads(record.read_text())
    assert seen == {"gpu_ids": ["0"], "device": "cpu"}  # Ray gave it the GPU; no CUDA here, so torch runs on the CPU
    assert summary["labelled"] == 24 and sorted(_keys(str(tmp_path / "out" / "labels"))) == sorted(
        p.name for p in Path(bucket).iterdir())


def test_pipeline_gpu_vitl_plan_labels_and_evaluates_with_gpu_actors(ray_session, tmp_path, tiny_checkpoint, bucket):
    """The ``gpu_vitl`` preset's labelling and evaluation stages, as planned (GPU actors, batch
    sizes 32 and 8, partitions of 256), with a tiny model at 70 px on a small bucket and
    held-out set, and pools of one actor: this cluster has one GPU, the plan's fixed pools of
    8 and 2 would wait for GPU nodes to join (what they do on an autoscaling cluster)."""
    from depthlib.pipeline.config import PRESETS, PipelineConfig
    from depthlib.pipeline.stages import build_plan
    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic

    plan = build_plan(PipelineConfig(**PRESETS["gpu_vitl"], storage=str(tmp_path / "p"), unlabeled=bucket))
    label_stage = next(s for s in plan.stages if s.name == "pseudo_labels")
    label = inspect.getclosurevars(label_stage.run).nonlocals["config"]  # the stage's PseudoLabelConfig
    assert isinstance(label, PseudoLabelConfig)
    assert (label.batch_size, label.min_actors, label.max_actors, label.partition_size) == (32, 8, 8, 256)
    assert label.gpus_per_actor is None  # a GPU each, from the cluster
    tiny = dict(checkpoint=tiny_checkpoint, encoder="tiny", input_size=SIZE, min_actors=1, max_actors=1)
    summary = run_pseudo_label(dataclasses.replace(label, **tiny), log=lambda *_: None)
    assert summary["labelled"] == 24 and summary["skipped"] == 0

    heldout = str(tmp_path / "heldout")
    make_synthetic(MakeSyntheticConfig(output=heldout, count=6, size="70x98", seed=3, style="photo",
                                       scenes_per_task=6), progress=False)
    from depthlib.evaluation.job import run_evaluation

    ev_stage = next(s for s in plan.stages if s.name == "evaluate/teacher")
    ev = inspect.getclosurevars(ev_stage.run).nonlocals["config"]  # the stage's EvaluateConfig
    assert (ev.batch_size, ev.min_actors, ev.max_actors, ev.gpus_per_actor) == (8, 2, 2, None)
    report = run_evaluation(dataclasses.replace(
        ev, **tiny, dataset=[f"shards.photo={heldout}/shards"], depth_range=[], split=[],
        output=str(tmp_path / "eval")), log=lambda *_: None)
    assert report["datasets"]["shards.photo"]["n_images"] == 6


def test_stand_in_holds_the_device_for_exactly_its_time_one_pass_at_a_time():
    actor = stand_in_actor(200.0)(batch_size=8)
    x = np.zeros((8, 3, 14, 28), np.uint8)
    t0 = time.perf_counter()
    first, second = actor.forward(x), actor.forward(x)  # queued: the second starts when the first ends
    assert time.perf_counter() - t0 < 0.02  # queueing does not wait
    actor.finish(first)
    t1 = time.perf_counter() - t0
    out = actor.finish(second)
    t2 = time.perf_counter() - t0
    assert 0.04 <= t1 < 0.06 and 0.08 <= t2 < 0.10  # 8 / 200 s per pass, serial
    assert out.shape == (8, 14, 28) and out.dtype == np.float32 and actor.device_s == pytest.approx(0.08)
    with pytest.raises(ValueError, match="> 0"):
        stand_in_actor(0)


def test_the_job_with_a_stand_in_labels_every_image(ray_session, tmp_path, bucket):
    """The benchmark's path: the same job with the stand-in in place of the model."""
    config = PseudoLabelConfig(input=bucket, output=str(tmp_path / "out"), checkpoint="stand-in", encoder="tiny",
                               input_size=SIZE, batch_size=4, partition_size=8, samples=0)
    summary = run_pseudo_label(config, log=lambda *_: None, actor_class=stand_in_actor(500.0))
    assert summary["labelled"] == 24 and len(set(_keys(str(tmp_path / "out" / "labels")))) == 24
