"""Pseudo-label every image under a prefix with a teacher model (Ray Data).

    python ray_jobs/pseudo_label.py --input s3://bucket/images --output s3://bucket/labels-v1 \
        --checkpoint s3://bucket/ckpt/depth_anything_v2_vitl.pth --encoder vitl \
        --min-actors 8 --max-actors 8 --batch-size 32

or through ``ray job submit --working-dir . -- python ray_jobs/pseudo_label.py ...``.
``--input`` may hold tar archives (``.tar``, ``.tar.gz``, ``.tgz``, tars of tars:
every image member is a sample keyed ``ARCHIVE/MEMBER``) and Parquet files
(every row, its bytes in ``--image-column``: keyed ``FILE/ROW``) beside loose
images; see ``depthlib/archives/`` and the README.
Re-run with the same arguments to resume after any interruption. Outputs:
``labels/`` (shards), ``errors/`` (skipped keys with reasons), ``samples/``
(pictures) and ``summary.json``. See ``depthlib/pseudo_label/plan.py`` for how
exactly-once output is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_config  # noqa: E402
from depthlib.pseudo_label.config import PseudoLabelConfig  # noqa: E402


def main(argv=None) -> dict:
    from depthlib.pseudo_label.job import LabellingInputError, check_inputs, run_pseudo_label

    try:
        config = parse_config(PseudoLabelConfig, argv)
        check_inputs(config)  # the checkpoint, the output, something to label: before Ray starts
    except (ValueError, LabellingInputError) as e:  # one line naming the setting, exit 2, as argparse does
        exit_with_error("pseudo_label.py", e)
    import ray

    ray.init()  # joins RAY_ADDRESS (set by `ray job submit`) or starts a local cluster
    return run_pseudo_label(config)


if __name__ == "__main__":
    main()
