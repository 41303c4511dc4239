"""Predict depth for images with a Depth Anything V2 checkpoint and save pictures.

    python ray_jobs/predict.py --input photo.jpg --checkpoint depth_anything_v2_vits.pth \
        --encoder vits --output out/

Writes ``<output>/<name>_depth.png`` (image beside colourised prediction) and
``<output>/<name>_depth.npy`` (float32 map at the image's size: disparity for
relative models, metres for ``--metric``). Runs locally; no Ray cluster needed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_config  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(kw_only=True)
class PredictConfig:
    """Predict depth for one image or a directory of images."""

    input: str = field(metadata={"help": "an image file or a directory of images"})
    checkpoint: str = field(metadata={"help": "released-format .pth (local path, s3:// or gs:// URI)"})
    encoder: str = field(default="vits", metadata={"help": "vits | vitb | vitl | vitg | tiny"})
    output: str = field(default="predictions", metadata={"help": "output directory"})
    input_size: int = field(default=518, metadata={"help": "shorter side fed to the model (multiple of 14)"})
    metric: bool = field(default=False, metadata={"help": "the checkpoint is a metric-depth model"})
    max_depth: float = field(default=20.0, metadata={"help": "metric models: depth of a sigmoid output of 1, metres"})
    dtype: str = field(default="bf16", metadata={"help": "bf16 | fp16 | fp32 on CUDA (CPU always fp32)"})

    def __post_init__(self):
        from depthlib.models.specs import MODEL_SPECS

        if self.encoder not in MODEL_SPECS:
            raise ValueError(f"--encoder must be one of {sorted(MODEL_SPECS)}, got {self.encoder!r}")
        if self.input_size % 14:
            raise ValueError(f"--input-size must be a multiple of 14, got {self.input_size}")


def _input_files(src: Path) -> list[Path]:
    if not src.exists():
        raise FileNotFoundError(f"--input {src} does not exist")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if src.is_dir() else [src]
    if not files:
        raise ValueError(f"--input {src} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def main(argv=None) -> None:
    from depthlib.models.checkpoints import check_checkpoint

    try:
        cfg = parse_config(PredictConfig, argv)
        files = _input_files(Path(cfg.input))
        check_checkpoint(cfg.checkpoint, cfg.encoder, cfg.metric)
    except (ValueError, FileNotFoundError) as e:  # a bad setting or input: one line, exit 2, as argparse does
        exit_with_error("predict.py", e)
    import numpy as np

    from depthlib.images import decode_image
    from depthlib.inference import default_device, predict
    from depthlib.models import load_released
    from depthlib.visualize import side_by_side, to_png

    model = load_released(cfg.checkpoint, cfg.encoder, metric=cfg.metric, max_depth=cfg.max_depth)
    model = model.to(default_device())
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        image = decode_image(f.read_bytes())
        pred = predict(model, image, cfg.input_size, cfg.dtype)
        np.save(out_dir / f"{f.stem}_depth.npy", pred)
        (out_dir / f"{f.stem}_depth.png").write_bytes(to_png(side_by_side(image, pred, invert=cfg.metric)))
        kind = "depth (m)" if cfg.metric else "disparity"
        print(f"{f.name}: {image.shape[1]}x{image.shape[0]}, {kind} range {pred.min():.4g}..{pred.max():.4g}"
              f" -> {out_dir / (f.stem + '_depth.png')}")


if __name__ == "__main__":
    main()
