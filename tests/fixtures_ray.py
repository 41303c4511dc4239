"""One small local Ray cluster for the whole test session.

Tests that need Ray take the ``ray_session`` fixture; ``ray.init`` runs once.
"""

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Logical CPUs above the 2 physical ones let an actor pool and its CPU
    # preprocessing tasks be scheduled side by side in tests.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
