"""Shared pytest set-up.

Fixtures live in their own modules under ``tests/`` and are registered here:
``fixtures_ray`` (one local Ray cluster per test session) and ``fixtures_s3``
(a real S3-compatible server, SeaweedFS's ``weed``, per test session).
"""

import os

# Keep torch and numpy from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

pytest_plugins = ["fixtures_ray", "fixtures_s3"]
