"""One small local Ray cluster for the whole test session.

Tests that need Ray take the ``ray_session`` fixture; ``ray.init`` runs once.

The cluster declares one GPU, as a GPU node would: every job that asks Ray for
a GPU (labelling and evaluation actors by default) is planned and scheduled
exactly as on a GPU cluster, so a plan a GPU cluster would refuse fails here.
Ray only hands the GPU's id to the actor; with no CUDA device the model then
runs on the CPU. Training runs on CPU workers (``gpus_per_worker=0``, the
``tiny_cpu`` preset's): Ray Train's ``use_gpu`` sets up NCCL, which needs CUDA.
"""

import os

import pytest

# Ray Train's controller polls its workers every 2 s by default, so each run
# ends up to 2 s after its workers finish, and its start waits on polls too;
# the suite starts about 40 runs. (Ray's own tests poll every 0.1 s.) Set when
# pytest loads this plugin, before any ray.init: the local cluster's processes
# inherit it. Tests that start Ray processes of their own pass it on.
# Each run also starts a PreemptionWatcher actor (one more Python process, a few
# seconds of a 2-core machine's CPU) that only acts on a cloud's spot-preemption
# notice, which never comes here: off.
TEST_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
for _key, _value in TEST_RAY_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Logical CPUs above the 2 physical ones let an actor pool and its CPU
    # preprocessing tasks be scheduled side by side in tests.
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
