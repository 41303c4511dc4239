"""What a GPU training job asks Ray for, checked on the test session's cluster,
which declares one GPU as a GPU node would (``fixtures_ray``).

A GPU preset's workers ask for ``use_gpu`` and one GPU and one CPU each, and
those worker bundles are schedulable on a cluster with GPUs; the CPU preset
(``tiny_cpu``) asks for no GPU. Nothing beyond the request and the placement
can run here: with ``use_gpu`` Ray Train sets up NCCL process groups, which
need CUDA (``tests/test_gpu.py`` runs the rest on a GPU machine).
"""

from __future__ import annotations

import pytest

from depthlib.training.config import PRESETS, TrainConfig
from depthlib.training.job import scaling_config


def _config(preset: str, **overrides) -> TrainConfig:
    return TrainConfig(**{"stage": "teacher", **PRESETS[preset], "data": ["unused"], "output": "unused", **overrides})


def test_a_gpu_preset_asks_for_one_gpu_per_worker(ray_session):
    scaling = scaling_config(_config("teacher_vitl", workers=1))
    assert scaling.use_gpu
    assert scaling.num_workers == 1
    assert scaling.resources_per_worker == {"CPU": 1, "GPU": 1}


def test_the_cpu_preset_asks_for_no_gpu(ray_session):
    scaling = scaling_config(_config("tiny_cpu", workers=2))
    assert not scaling.use_gpu
    assert "GPU" not in scaling.resources_per_worker
    assert scaling.resources_per_worker["CPU"] > 0


def test_the_gpu_worker_bundles_are_schedulable(ray_session):
    ray = ray_session
    scaling = scaling_config(_config("teacher_vitl", workers=1))
    group = ray.util.placement_group([dict(scaling.resources_per_worker)] * scaling.num_workers)
    try:
        ready, _ = ray.wait([group.ready()], timeout=30)
        assert ready, f"placement group {scaling.resources_per_worker} not scheduled on {ray.cluster_resources()}"
    finally:
        ray.util.remove_placement_group(group)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "tiny_cpu"])
def test_every_gpu_preset_asks_for_gpus(ray_session, preset):
    workers = 2 if PRESETS[preset].get("fsdp") else 1
    assert scaling_config(_config(preset, workers=workers)).use_gpu
