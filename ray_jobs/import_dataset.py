"""Import one of the paper's teacher datasets, as downloaded, into shards (Ray tasks).

    python ray_jobs/import_dataset.py --dataset hypersim --input s3://bucket/hypersim-zips \
        --output s3://bucket/shards/hypersim-train \
        --split metadata_images_split_scene_v1.csv --subset train \
        --hypersim-camera-parameters metadata_camera_parameters.csv
    python ray_jobs/import_dataset.py --dataset vkitti2 --input /data/vkitti2 --output /data/shards/vkitti2

``--dataset`` is one of hypersim, vkitti2, tartanair, blendedmvs, irs; the
input may be the extracted tree or the archives as shipped (read in place).
Re-run the same command to resume. Outputs: ``shards/`` (kind "synthetic"),
``errors/`` (skipped frames with reasons), ``summary.json``. Bad settings or
an input without frames: one ``import_dataset.py: error: ...`` line, exit 2,
before Ray starts. The work is in ``depthlib/importers/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_config  # noqa: E402
from depthlib.importers.job import ImportConfig, ImportInputError, prepare, run_import  # noqa: E402


def main(argv=None) -> dict:
    try:
        config = parse_config(ImportConfig, argv)
        plan = prepare(config)  # lists the input and freezes the plan: before Ray starts
    except (ValueError, ImportInputError) as e:
        exit_with_error("import_dataset.py", e)
    import ray

    ray.init(ignore_reinit_error=True)  # joins RAY_ADDRESS (set by `ray job submit`) or starts a local cluster
    summary = run_import(config, plan)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
