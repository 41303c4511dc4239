"""Pseudo-labelling throughput: the Ray job against the bare loop, in one run.

    .venv/bin/python benchmarks/pseudo_label.py [--encoder vits] [--input-size 518] [--images 24]

(a) bare loop: read, decode, preprocess, forward (same-shape batches), encode,
    write shards, one step after another in this process;
(b) the Ray Data job (``run_pseudo_label``) on the same images and weights,
    on a local Ray cluster: images/s over the whole pipeline (worker start-up
    and model loading included) and in steady state (between the first and
    the last partition commit);
(c) on CUDA only: the model alone on batches already on the device.

Prints images/s for each and the ratios b/a and b/c; on CUDA also achieved
TFLOP/s of the model (forward FLOPs counted with torch's FLOP counter).
Weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from depthlib import shards  # noqa: E402
from depthlib.images import decode_image  # noqa: E402
from depthlib.inference import default_device, run_batch  # noqa: E402
from depthlib.models import build_model, export_released, load_released  # noqa: E402
from depthlib.synthetic import render_scene  # noqa: E402
from depthlib.transforms import preprocess  # noqa: E402


def make_images(directory: Path, n: int, sizes: list[tuple[int, int]]) -> list[Path]:
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        scene = render_scene(seed=1000 + i, height=h, width=w, style="photo")
        buf = io.BytesIO()
        Image.fromarray(scene.image).save(buf, "JPEG", quality=92)
        p = directory / f"{i:05d}.jpg"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def bare_loop(paths: list[Path], checkpoint: str, encoder: str, input_size: int, batch_size: int,
              dtype: str, out: Path) -> float:
    """Images/s of the plain sequential loop (model load excluded, as in the job's steady state)."""
    model = load_released(checkpoint, encoder).to(default_device())
    t0 = time.perf_counter()
    groups: dict[tuple, list] = {}
    rows = []

    def flush(items):
        x = torch.stack([t for _, _, t in items])
        preds = run_batch(model, x, dtype).cpu().numpy()
        for (key, data, t), p in zip(items, preds):
            rows.append(shards.make_row(key, data, "jpeg", p, depth_type="disparity", kind="pseudo",
                                        image_size=decode_image(data).shape[:2], provenance={"teacher": "bench"}))

    for p in paths:
        data = p.read_bytes()
        x = preprocess(decode_image(data), input_size)
        g = groups.setdefault(tuple(x.shape), [])
        g.append((p.name, data, x))
        if len(g) == batch_size:
            flush(g)
            groups[tuple(x.shape)] = []
    for g in groups.values():
        if g:
            flush(g)
    shards.write_shard(rows, str(out / "bare.parquet"))
    return len(paths) / (time.perf_counter() - t0)


def ray_job(image_dir: Path, checkpoint: str, encoder: str, input_size: int, batch_size: int, dtype: str,
            out: Path, partition_size: int) -> tuple[float, float]:
    import ray

    from depthlib.pseudo_label import PseudoLabelConfig, run_pseudo_label

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = PseudoLabelConfig(input=str(image_dir), output=str(out / "job"), checkpoint=checkpoint,
                            encoder=encoder, input_size=input_size, batch_size=batch_size, dtype=dtype,
                            partition_size=partition_size, samples=0)
    summary = run_pseudo_label(cfg, log=lambda *_: None)
    # Steady state: images committed between the first and the last partition commit
    # (excludes worker start-up and model loading, which a long job amortises).
    records = sorted((json.loads(p.read_text()) for p in (out / "job" / "_done").glob("*.json")),
                     key=lambda r: r["committed_at"])
    span = records[-1]["committed_at"] - records[0]["committed_at"]
    steady = sum(r["n_labels"] for r in records[1:]) / span if span > 0 else float("nan")
    return summary["this_run"]["images_per_s"], steady


def model_alone(encoder: str, input_size: int, batch_size: int, dtype: str, shape: tuple[int, int],
                iters: int = 20) -> tuple[float, float]:
    """Images/s and TFLOP/s of the model on device-resident batches (CUDA only)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(encoder).cuda().eval()
    x = torch.randn(batch_size, 3, *shape, device="cuda")
    with FlopCounterMode(display=False) as fc:
        run_batch(model, x[:1], dtype)
    flops_per_image = fc.get_total_flops()
    for _ in range(3):
        run_batch(model, x, dtype)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        run_batch(model, x, dtype)
    torch.cuda.synchronize()
    ips = iters * batch_size / (time.perf_counter() - t0)
    return ips, ips * flops_per_image / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="vits")
    ap.add_argument("--input-size", type=int, default=518)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 32 on CUDA")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--partition-size", type=int, default=None, help="default: images / 4")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    bs = args.batch_size or (32 if cuda else 4)
    sizes = [(480, 640), (480, 640), (640, 480), (720, 1280)]  # mixed aspect ratios, as in real buckets
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, sizes)
        ckpt = str(tmp / "teacher.pth")
        export_released(build_model(args.encoder), ckpt)
        a = bare_loop(paths, ckpt, args.encoder, args.input_size, bs, args.dtype, tmp)
        b, b_steady = ray_job(tmp / "images", ckpt, args.encoder, args.input_size, bs, args.dtype, tmp,
                              args.partition_size or max(1, args.images // 8))
        result = {"device": torch.cuda.get_device_name() if cuda else f"cpu x{os.cpu_count()}",
                  "encoder": args.encoder, "input_size": args.input_size, "images": args.images,
                  "batch_size": bs, "bare_loop_img_s": round(a, 3), "ray_job_img_s": round(b, 3),
                  "ray_job_steady_img_s": round(b_steady, 3), "ratio_b_over_a": round(b / a, 3),
                  "ratio_steady_b_over_a": round(b_steady / a, 3)}
        if cuda:
            c, tflops = model_alone(args.encoder, args.input_size, bs, args.dtype, (518, 686))
            result.update(model_alone_img_s=round(c, 2), ratio_b_over_c=round(b / c, 3),
                          model_tflops=round(tflops, 1), img_per_gpu_hour=round(b * 3600))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
