"""The same photo through the project's model and its three exports: docs/export_formats.png.

    .venv/bin/python docs/make_export_figure.py --checkpoint demo_output/teacher/model.pth --encoder tiny

Exports ``--checkpoint`` with ``ray_jobs/export.py``'s library (hf, onnx,
safetensors) into a temporary directory, then predicts depth for
matplotlib's ``grace_hopper.jpg`` (a real photo installed with matplotlib)
with: depthlib's ``predict``; ``pipeline("depth-estimation")`` on the hf
folder; ONNX Runtime on the ONNX file (depthlib's preprocessing); depthlib's
loader on the safetensors file. Each panel's title gives its max relative
difference to depthlib's prediction (max |a - b| / max |b|). Needs
``depthlib[export]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "export_formats.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.cbook
    import matplotlib.pyplot as plt
    import torch
    from PIL import Image

    from depthlib.export.job import ExportConfig, max_relative_error, run_export
    from depthlib.export.onnx_file import onnx_session, run_onnx
    from depthlib.inference import predict
    from depthlib.models import load_released
    from depthlib.transforms import preprocess, resize_prediction
    from depthlib.visualize import colorize

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = np.asarray(Image.open(photo).convert("RGB")).copy()
    model = load_released(args.checkpoint, args.encoder)
    ours = predict(model, image, dtype="fp32")
    panels = [("photo", image), ("depthlib predict (.pth)", ours)]
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("hf", "onnx", "safetensors"):
            run_export(ExportConfig(checkpoint=args.checkpoint, encoder=args.encoder, format=fmt,
                                    output=os.path.join(tmp, fmt)))
        from transformers import pipeline

        hf = pipeline("depth-estimation", model=os.path.join(tmp, "hf"), device="cpu")(Image.fromarray(image))
        panels.append(("transformers pipeline (hf)", hf["predicted_depth"].numpy()))
        session = onnx_session(os.path.join(tmp, "onnx", "model.onnx"))
        out = torch.from_numpy(run_onnx(session, preprocess(image)[None]))
        panels.append(("ONNX Runtime (onnx)", resize_prediction(out, image.shape[:2])[0].numpy()))
        st = load_released(os.path.join(tmp, "safetensors", "model.safetensors"), args.encoder)
        panels.append(("depthlib predict (.safetensors)", predict(st, image, dtype="fp32")))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.2))
    for ax, (title, data) in zip(axes, panels):
        if data.ndim == 2:
            if title.startswith("depthlib predict (.pth)"):
                sub = "reference"
            else:
                sub = f"max rel. diff {max_relative_error(data, ours):.1e}"
            title = f"{title}\n{sub}"
            data = colorize(data)
        ax.imshow(data)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"One photo through the project's model and its exports ({args.encoder}, "
                 f"{Path(args.checkpoint).name})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
