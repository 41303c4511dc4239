"""Render procedural scenes with exact metric depth into object storage (Ray tasks).

    python ray_jobs/make_synthetic.py --output s3://bucket/synthetic-v1 --count 100000 \
        --size 518x518 --seed 0 --format shards

    # the unlabeled "photo" bucket for the pseudo-labelling demo
    python ray_jobs/make_synthetic.py --output s3://bucket/photos --count 20000 \
        --size 480x640 --seed 1 --style photo --format images

or through ``ray job submit --working-dir . -- python ray_jobs/make_synthetic.py ...``.
Joins the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``) or starts a
local one. Re-run the same command to resume: finished tasks are skipped.
The work is in ``depthlib/synthetic_job.py``; the renderer in
``depthlib/synthetic/``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_config  # noqa: E402
from depthlib.synthetic_job import MakeSyntheticConfig  # noqa: E402


def main(argv=None) -> dict:
    try:
        config = parse_config(MakeSyntheticConfig, argv)
    except ValueError as e:  # a bad setting: one line, exit 2, as argparse does
        exit_with_error("make_synthetic.py", e)
    import ray

    from depthlib.synthetic_job import make_synthetic

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    summary = make_synthetic(config)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
