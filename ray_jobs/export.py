"""Export a checkpoint as a transformers folder, an ONNX file or a safetensors file.

    python ray_jobs/export.py --checkpoint runs/student/model.pth --encoder vits \
        --format hf --output exports/student-hf
    python ray_jobs/export.py --checkpoint s3://bucket/runs/metric --encoder vitb --metric --max-depth 20 \
        --format onnx --output s3://bucket/exports/metric-onnx

``--checkpoint``: a run's ``model.pth``, a released ``.pth``, a ``.safetensors``,
or a run / Ray Train checkpoint directory. Bad settings and inputs end with
one ``export.py: error: ...`` line and exit 2 before any work. Runs locally;
no Ray cluster needed. Needs ``pip install 'depthlib[export]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_config  # noqa: E402
from depthlib.export.job import ExportConfig  # noqa: E402


def main(argv=None) -> dict:
    from depthlib.export.job import check_inputs, run_export

    try:
        cfg = parse_config(ExportConfig, argv)
        weights = check_inputs(cfg)
    except (ValueError, FileNotFoundError) as e:  # a bad setting or input: one line, exit 2, as argparse does
        exit_with_error("export.py", "; ".join(line.strip() for line in str(e).splitlines() if line.strip()))
    return run_export(cfg, weights)


if __name__ == "__main__":
    main()
