"""Training throughput: the Ray Train job against a plain PyTorch loop, in one run.

    .venv/bin/python benchmarks/train_step.py [--encoder tiny] [--crop 126] [--batch-size 8] [--steps 200]
    .venv/bin/python benchmarks/train_step.py --encoder vitl --crop 518 --batch-size 8 --device cuda
    .venv/bin/python benchmarks/train_step.py --encoder vitl --crop 518 --batch-size 32 --device cuda --compile

(a) plain loop: one process, the same model, objective (teacher: ssi + gm),
    optimiser and batch size, on examples already decoded and augmented in
    memory (the loop's upper bound: no data loading at all);
(b) the training job (``run_training``) with ONE worker on the same shards,
    streaming them through Ray Data (read, decode, augment on other CPUs);
    its images/s is taken from its own metrics rows after the warm-up.

Prints images/s of both and the ratio b/a (target >= 0.9). The worker and the
plain loop use the same number of torch threads. On CUDA (``--device cuda``)
both run bf16 autocast, and the plain loop's training FLOPs (forward and
backward, counted with torch's FLOP counter on an eager step) give achieved
TFLOP/s per GPU, and its share of the bf16 peak (``--peak-tflops``: the
measured matmul peak; default the data-sheet figure).

Both take the fused Adam kernel (the training loop's default). ``--compile``
compiles the encoder blocks in both (the job's ``--compile``; the timed steps
start after the warm-up, which includes the compilation); ``--compile-head``
also compiles the DPT head in the plain loop (to measure what it would add).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from depthlib import storage  # noqa: E402
from depthlib.inference import autocast_for  # noqa: E402
from depthlib.models import build_model  # noqa: E402
from depthlib.training.data import load_validation_rows  # noqa: E402
from depthlib.training.examples import ExampleSpec, make_example  # noqa: E402
from depthlib.training.objectives import RelativeObjective  # noqa: E402
from depthlib.training.optim import make_optimizer  # noqa: E402
from depthlib.training.parallel import compile_model  # noqa: E402
from depthlib.transforms import normalize  # noqa: E402

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, no sparsity


def render(output: str, count: int, size: int) -> str:
    import ray

    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic

    make_synthetic(MakeSyntheticConfig(output=output, count=count, size=f"{size}x{size}", seed=0,
                                       style="synthetic", scenes_per_task=64), progress=False)
    assert ray.is_initialized()
    return storage.join(output, "shards")


def plain_loop(shards_uri: str, encoder: str, crop: int, batch_size: int, steps: int, warmup: int,
               device: torch.device, threads: int, compile_blocks: bool = False,
               compile_head: bool = False) -> tuple[float, float]:
    """(images/s, training FLOPs per image) of the bare loop on in-memory examples."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    spec = ExampleSpec("inverse_depth", crop)
    rows = load_validation_rows(shards_uri, 10_000)
    examples = [make_example(*r.decode(), spec, rng) for r in rows]
    batches = []
    for i in range(0, len(examples) - batch_size + 1, batch_size):
        part = examples[i:i + batch_size]
        batches.append({k: torch.from_numpy(np.stack([e[k] for e in part])) for k in ("image", "target", "mask",
                                                                                     "region")})
    model = build_model(encoder).to(device).train()
    objective = RelativeObjective()
    optimizer = make_optimizer(model, "adam", 1e-5, 10.0, 0.0)
    autocast = autocast_for(device, "bf16")

    def step(b):
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        images = normalize(b["image"].float().div_(255.0))
        b["mask"] = b["mask"].bool()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = objective(model, images, b)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    flops_per_image = counter.get_total_flops() / batch_size
    if compile_blocks:
        compile_model(model, head=compile_head)
    for i in range(warmup):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0), flops_per_image


def ray_job(shards_uri: str, output: str, encoder: str, crop: int, batch_size: int, steps: int, warmup: int,
            gpus: float, cpus: float, compile_blocks: bool = False) -> float:
    """Images/s of the training job with one worker, from its metrics rows after ``warmup`` steps."""
    from depthlib.training.config import TrainConfig
    from depthlib.training.job import run_training

    log_every = 10
    cfg = TrainConfig(stage="teacher", data=[shards_uri], output=output, encoder=encoder, crop=crop,
                      batch_size=batch_size, steps=steps + warmup, workers=1, gpus_per_worker=gpus,
                      cpus_per_worker=cpus, log_every=log_every, checkpoint_every=10**9, val_every=10**9,
                      max_failures=0, lr=1e-5, rows_per_group=4 * batch_size, compile=compile_blocks)
    run_training(cfg, log=lambda *_: None, start_retries=0)
    rows = [json.loads(line) for line in storage.read_bytes(storage.join(output, "metrics.jsonl")).decode().splitlines()]
    timed = [r for r in rows if r["step"] > warmup and "images_per_s" in r and r["step"] < steps + warmup]
    # each row's rate covers the log_every steps before it: weight equally
    return float(np.mean([r["images_per_s"] for r in timed]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--crop", type=int, default=126)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="timed steps")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the loop and of the worker (CPU)")
    parser.add_argument("--compile", action="store_true", help="compile the encoder blocks (plain loop and job)")
    parser.add_argument("--compile-head", action="store_true", help="with --compile: the DPT head too (plain loop)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 peak of the GPU for the share printed (default: data sheet; H200 measured ~790)")
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        shards_uri = render(f"{tmp}/data", args.scenes, args.crop)
        t0 = time.time()
        plain, flops = plain_loop(shards_uri, args.encoder, args.crop, args.batch_size, args.steps, args.warmup,
                                  device, args.threads, args.compile, args.compile_head)
        t1 = time.time()
        gpus = 1.0 if device.type == "cuda" else 0.0
        job = ray_job(shards_uri, f"{tmp}/run", args.encoder, args.crop, args.batch_size, args.steps, args.warmup,
                      gpus, cpus=float(args.threads), compile_blocks=args.compile)
        t2 = time.time()
    compiled = ("compiled blocks" + (" + head (plain loop)" if args.compile_head else "")) if args.compile else "eager"
    print(f"{args.encoder} at {args.crop}px, batch {args.batch_size}, {args.device}, {args.threads} thread(s), "
          f"{compiled}, fused Adam:")
    print(f"  (a) plain loop, in-memory batches: {plain:8.2f} images/s   ({t1 - t0:.0f}s)")
    print(f"  (b) Ray Train job, 1 worker:      {job:8.2f} images/s   ({t2 - t1:.0f}s with start-up)")
    print(f"  b/a = {job / plain:.3f}")
    print(f"  training FLOPs per image (fwd+bwd): {flops / 1e9:.2f} GFLOP")
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        for label, rate in (("plain", plain), ("job", job)):
            tflops = rate * flops / 1e12
            share = f", {100 * tflops / peak:.1f}% of the {peak:.0f} TFLOP/s bf16 peak" if peak else ""
            print(f"  {label}: {tflops:.1f} TFLOP/s on {name}{share}")


if __name__ == "__main__":
    main()
