"""Pseudo-labelling throughput: the Ray job against the bare loop, in one run.

    .venv/bin/python benchmarks/pseudo_label.py [--encoder vits] [--input-size 518] [--images 24]
    .venv/bin/python benchmarks/pseudo_label.py --stand-in 164 40 [--images 384]   # no GPU needed

Stand-in mode (``--stand-in RATE ...``): the feeding side of a GPU labelling
job, measured on any machine. The model actor is replaced by a stand-in
accelerator that takes exactly ``batch / RATE`` seconds per pass
(:mod:`depthlib.pseudo_label.stand_in`), on a local Ray cluster that
declares one GPU (the job's GPU plan: a GPU actor with one CPU, decoding on
the other cores). Inputs are realistic 1-2 MP JPEGs (photo-style renders with
sensor grain, 960x1280, 1280x960, 1080x1920). It prints, for each rate, the
job's steady-state images/s over the rate (how busy a GPU of that speed
would be), and once, the CPU core-milliseconds per image of each CPU stage
(read, decode, resize, transfer, encode, write; the job's own functions
timed in this process on the same images, after an untimed warm-up pass),
the whole job's CPU per image in steady state (every process of the local
cluster, from ``/proc``, the stand-in actor left out), and the cores per
GPU that follow. Ray Data's memory warnings during the run are counted (the job's
memory reservations should leave none).

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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from depthlib import shards  # noqa: E402
from depthlib.inference import default_device, run_batch  # noqa: E402
from depthlib.models import build_model, export_released, load_released  # noqa: E402
from depthlib.pseudo_label.stages import DecodePartition, pixels_to_model  # noqa: E402
from depthlib.synthetic import render_scene  # noqa: E402


def make_images(directory: Path, n: int, sizes: list[tuple[int, int]], grain: float = 0.0,
                unique: int | None = None) -> list[Path]:
    """``n`` JPEGs (quality 92) of photo-style renders cycling through ``sizes``; ``grain``:
    std of Gaussian sensor noise added (renders are smoother than photos: 12 gives a real
    photo's ~0.4 bytes per pixel); ``unique``: render this many and repeat them."""
    paths, encoded = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        if unique is None or i < unique:
            h, w = sizes[i % len(sizes)]
            image = render_scene(seed=1000 + i, height=h, width=w, style="photo").image
            if grain:
                image = np.clip(image + rng.normal(0, grain, image.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=92)
            encoded.append(buf.getvalue())
        p = directory / f"{i:05d}.jpg"
        p.write_bytes(encoded[i % len(encoded)])
        paths.append(p)
    return paths


def bare_loop(paths: list[Path], checkpoint: str, encoder: str, input_size: int, batch_size: int,
              dtype: str, out: Path, preprocessing: str) -> float:
    """Images/s of the plain sequential loop (model load excluded, as in the job's steady state):
    the job's own read, decode and resize, the model, label encoding, one shard."""
    model = load_released(checkpoint, encoder).to(default_device())
    stage = DecodePartition(str(paths[0].parent), input_size, 100_000_000, batch_size, preprocessing=preprocessing)
    t0 = time.perf_counter()
    groups: dict[tuple, list] = {}
    rows = []

    def flush(items):
        x = pixels_to_model(np.stack([t for *_, t in items]), default_device())
        preds = run_batch(model, x, dtype).cpu().numpy()
        for (key, data, hw, _), p in zip(items, preds):
            rows.append(shards.make_row(key, data, "jpeg", p, depth_type="disparity", kind="pseudo",
                                        image_size=hw, provenance={"teacher": "bench"}))

    for p in paths:
        data = stage.read(p.name)
        image, hw = stage.decode(data)
        x = stage.resize(image, hw)
        g = groups.setdefault(x.shape, [])
        g.append((p.name, data, hw, x))
        if len(g) == batch_size:
            flush(g)
            groups[x.shape] = []
    for g in groups.values():
        if g:
            flush(g)
    shards.write_shard(rows, str(out / "bare.parquet"))
    return len(paths) / (time.perf_counter() - t0)


def stage_costs(paths: list[Path], input_size: int, batch_size: int, preprocessing: str,
                out: Path) -> tuple[dict[str, float], float]:
    """(CPU core-milliseconds per image of each CPU stage of the job, core-ms per image of the
    same decodes through Pillow alone), timed in this process on
    the job's own functions (``time.thread_time``: the CPU time of the calling thread, so Ray's
    own background threads in this process do not count; one torch thread):

    read (the object's bytes), decode (``depthlib.images``: Pillow reads the header,
    torchvision's libjpeg-turbo the pixels of a full-size JPEG; Pillow at a reduced DCT scale
    for large JPEGs with ``reduced_decode``), resize (to the model's input), transfer (a
    decoded block through Ray's object store and into the actor's batch, and the labels back
    to the writer), encode (label encoding and the Parquet shard), write (the shard to storage).

    Every stage runs once over all ``paths`` as a warm-up that is not counted: first calls
    import modules and fill caches (Ray Data's context alone imports for ~0.2 s), which a
    long job pays once per worker, not per image. Before 2026-12-07 the warm-up was missing
    and 32 images carried those one-time costs: "transfer" read 7-10 core-ms, about 5 of
    them imports."""
    import ray
    from ray.data.block import BlockAccessor

    from depthlib import storage
    from depthlib.pseudo_label.stages import rows_to_batch, stack_pixels
    from depthlib.pseudo_label.stand_in import stand_in_prediction

    torch.set_num_threads(1)
    stage = DecodePartition(str(paths[0].parent), input_size, 100_000_000, batch_size, preprocessing=preprocessing)
    cost = dict.fromkeys(("read", "decode", "resize", "transfer", "encode", "write"), 0.0)

    def timed(name, fn, *a):
        t = time.thread_time()
        r = fn(*a)
        cost[name] += time.thread_time() - t
        return r

    def one_pass(tag: str) -> list:
        decoded = []
        for p in paths:
            data = timed("read", stage.read, p.name)
            image, hw = timed("decode", stage.decode, data)
            decoded.append((p.name, data, hw, timed("resize", stage.resize, image, hw)))
        by_shape: dict[tuple, list] = {}
        for d in decoded:
            by_shape.setdefault(d[3].shape, []).append(d)
        for shape, items in by_shape.items():
            for start in range(0, len(items), batch_size):
                part = items[start:start + batch_size]
                block = rows_to_batch({"key": [k for k, *_ in part], "image": [d for _, d, *_ in part],
                                       "pixels": [x for *_, x in part]}, ())

                def to_actor():  # Ray Data's path: numpy batch -> Arrow block -> object store -> numpy batch
                    got = ray.get(ray.put(BlockAccessor.batch_to_block(block)))
                    got = BlockAccessor.for_block(got).to_batch_format("numpy")
                    return stack_pixels(got["pixels"], *shape[1:])

                x = timed("transfer", to_actor)
                labels = stand_in_prediction(x)  # label-like maps (smooth, bf16 steps), B x h x w
                back = rows_to_batch({"label": labels, "image": list(block["image"])}, ())

                def to_writer():
                    got = ray.get(ray.put(BlockAccessor.batch_to_block(back)))
                    return BlockAccessor.for_block(got).to_batch_format("numpy")

                timed("transfer", to_writer)

                def encode():
                    rows = [shards.make_row(k, d, None, lab, depth_type="disparity", kind="pseudo",
                                            image_size=hw, provenance={"teacher": "bench"})
                            for (k, d, hw, _), lab in zip(part, labels)]
                    return shards.table_to_parquet_bytes(shards.rows_to_table(rows))

                data = timed("encode", encode)
                timed("write", storage.write_bytes, str(out / f"costs-{tag}-{shape[1]}-{start}.parquet"), data)
        return decoded

    one_pass("warm-up")
    for k in cost:
        cost[k] = 0.0
    decoded = one_pass("timed")
    # the same decodes through Pillow alone (the decoder before torchvision's), not in the total
    from depthlib import images as images_mod

    saved, images_mod._JPEG_DECODER = images_mod._JPEG_DECODER, None
    try:
        stage.decode(decoded[0][1])  # warm-up
        t = time.thread_time()
        for _, data, _, _ in decoded:
            stage.decode(data)
        pillow_decode = time.thread_time() - t
    finally:
        images_mod._JPEG_DECODER = saved
    return {k: 1000 * v / len(paths) for k, v in cost.items()}, 1000 * pillow_decode / len(paths)


def memory_warnings():
    """A list that collects Ray Data's high-memory warnings (logged by the driver's executor)."""
    import logging

    found: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "memory per worker" in msg or "of memory per worker" in msg or "used up to" in msg:
                found.append(" ".join(msg.split())[:300])

    for name in ("ray.data", "ray.data._internal.issue_detection.issue_detector_manager"):
        logging.getLogger(name).addHandler(Catch())
    return found


def stand_in_runs(args, bs: int) -> dict:
    """The stand-in mode: per-stage CPU costs, then the job against stand-ins at each rate."""
    import ray

    from depthlib.pseudo_label.stand_in import stand_in_actor

    sizes = [(960, 1280), (960, 1280), (1280, 960), (1080, 1920)]  # 1.2-2.1 MP, mixed aspect ratios
    result: dict = {"device": f"stand-in on cpu x{os.cpu_count()}", "images": args.images, "batch_size": bs,
                    "input_size": args.input_size, "preprocessing": args.preprocessing,
                    "keys_per_task": args.keys_per_task}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, sizes, grain=12.0, unique=16)
        mp = [np.prod(Image.open(p).size) / 1e6 for p in paths[:16]]
        result["megapixels_mean"] = round(float(np.mean(mp)), 2)
        result["jpeg_bytes_per_pixel"] = round(float(np.mean([p.stat().st_size for p in paths[:16]])
                                                     / np.mean(mp) / 1e6), 3)
        ray.init(num_cpus=args.cpus or os.cpu_count(), num_gpus=1, include_dashboard=False, log_to_driver=False)
        costs, pillow_decode = stage_costs(paths[:96], args.input_size, bs, args.preprocessing, tmp)
        total = sum(costs.values())
        result["core_ms_per_image"] = {k: round(v, 2) for k, v in costs.items()}
        result["decode_core_ms_pillow_alone"] = round(pillow_decode, 2)
        result["decode_pillow_over_torchvision"] = round(pillow_decode / max(costs["decode"], 1e-9), 2)
        result["core_ms_per_image_total"] = round(total, 2)
        result["images_per_s_one_core_feeds"] = round(1000 / total, 1)
        warnings = memory_warnings()
        runs = []
        for i, rate in enumerate(args.stand_in):
            whole, steady, job_core_ms = ray_job(
                tmp / "images", "stand-in", "vits", args.input_size, bs, "bf16", tmp / f"job-{i}",
                args.partition_size or 32, stand_in_actor(rate), preprocessing=args.preprocessing,
                keys_per_task=args.keys_per_task)
            runs.append({"stand_in_img_s": rate, "job_img_s": round(whole, 2), "job_steady_img_s": round(steady, 2),
                         "steady_job_over_stand_in": round(steady / rate, 3),
                         "job_core_ms_per_image_steady": round(job_core_ms, 2),
                         "cores_per_gpu_at_this_rate": round(rate * job_core_ms / 1000, 1)})
        result["runs"] = runs
        result["ray_data_memory_warnings"] = warnings
    return result


def process_tree_cpu(root: int | None = None) -> dict[int, tuple[float, str]]:
    """{pid: (CPU seconds, command line)} of ``root`` (default: this process) and every process
    below it, read from ``/proc`` (Linux): user + system time, plus that of children already
    waited for. A local Ray cluster lives under its driver: GCS, raylet, dashboard agents and
    every worker (whose command line is its process title, e.g. ``ray::MapWorker(...)``)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        # after the command's ")": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based
        stats[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root or os.getpid()]
    while todo:
        pid = todo.pop()
        if pid not in stats:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = ""
        out[pid] = (stats[pid][1], cmd)
        todo += children.get(pid, [])
    return out


class CpuSampler:
    """Samples :func:`process_tree_cpu` every ``period`` s on a thread, to attribute the CPU of a
    whole local Ray job (every process, Ray's own included) to a window of time."""

    def __init__(self, period: float = 0.1):
        import threading

        self.samples: list[tuple[float, dict[int, tuple[float, str]]]] = []
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), process_tree_cpu()))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def cpu_between(self, t0: float, t1: float, exclude: str = "") -> tuple[float, float]:
        """(CPU seconds of every process between the last sample at or before ``t0`` and the
        first at or after ``t1``, that window's length): processes whose command line contains
        ``exclude`` are left out; a process born inside the window counts from zero."""
        before = max((s for s in self.samples if s[0] <= t0), key=lambda s: s[0], default=self.samples[0])
        after = min((s for s in self.samples if s[0] >= t1), key=lambda s: s[0], default=self.samples[-1])
        total = 0.0
        for pid, (cpu, cmd) in after[1].items():
            if exclude and exclude in cmd:
                continue
            total += cpu - before[1].get(pid, (0.0, ""))[0]
        return total, after[0] - before[0]


def timed_actor(actor_class, log: Path):
    """``actor_class`` that appends ``start end images`` of every forward pass to ``log``
    (start: when the pass is queued; end: when its output is back on the host)."""

    class TimedLabelActor(actor_class):
        def forward(self, pixels):
            start = time.perf_counter()
            return super().forward(pixels), start, len(pixels)

        def finish(self, handle):
            inner, start, n = handle
            out = super().finish(inner)
            with open(log, "a") as f:
                f.write(f"{start} {time.perf_counter()} {n}\n")
            return out

    return TimedLabelActor


def ray_job(image_dir: Path, checkpoint: str, encoder: str, input_size: int, batch_size: int, dtype: str,
            out: Path, partition_size: int, actor_class=None, **settings) -> tuple[float, float, float]:
    """(images/s over the whole job, images/s in steady state, core-ms per image in steady
    state). Steady state: the images of every forward pass over the time from the first
    pass queued to the last one's output back on the host (worker start-up and model loading
    excluded, which a long job amortises; partition commit times are not used: they arrive
    in bunches). Core-ms per image: the CPU time of every process of the local cluster (the
    driver, GCS, raylet, agents, every worker) in that window but the model actor's, over the
    images the window labels: the job's whole feeding cost, Ray's own included."""
    import ray

    from depthlib.pseudo_label import PseudoLabelConfig, run_pseudo_label
    from depthlib.pseudo_label.stages import LabelActor

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = PseudoLabelConfig(input=str(image_dir), output=str(out), checkpoint=checkpoint,
                            encoder=encoder, input_size=input_size, batch_size=batch_size, dtype=dtype,
                            partition_size=partition_size, samples=0, **settings)
    log = out.parent / f"{out.name}-passes.txt"
    with CpuSampler() as cpu:
        summary = run_pseudo_label(cfg, log=lambda *_: None,
                                   actor_class=timed_actor(actor_class or LabelActor, log))
    passes = np.loadtxt(log, ndmin=2)
    t0, t1 = passes[:, 0].min(), passes[:, 1].max()
    steady = passes[:, 2].sum() / (t1 - t0)
    # perf_counter is CLOCK_MONOTONIC on Linux: the actor's pass times and the sampler's agree
    feeding_s, window_s = cpu.cpu_between(t0, t1, exclude="LabelActor")
    core_ms = 1000 * feeding_s / (steady * window_s)  # CPU per image at the steady rate
    return summary["this_run"]["images_per_s"], float(steady), float(core_ms)


def model_alone(encoder: str, input_size: int, batch_size: int, dtype: str, shape: tuple[int, int],
                iters: int = 20, compile: bool = False) -> tuple[float, float]:
    """Images/s and TFLOP/s of the model on device-resident batches (CUDA only)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(encoder).cuda().eval()
    x = torch.randn(batch_size, 3, *shape, device="cuda")
    with FlopCounterMode(display=False) as fc:
        run_batch(model, x[:1], dtype)
    flops_per_image = fc.get_total_flops()
    if compile:
        model = torch.compile(model)
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
    ap.add_argument("--images", type=int, default=None, help="default: 64; 384 with --stand-in")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 32 on CUDA and with --stand-in")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--partition-size", type=int, default=None, help="default: images / 8; 32 with --stand-in")
    ap.add_argument("--preprocessing", default="fast", choices=("fast", "released"))
    ap.add_argument("--keys-per-task", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model in the job and alone")
    ap.add_argument("--stand-in", type=float, nargs="+", default=None, metavar="IMAGES_PER_S",
                    help="replace the model by a stand-in accelerator at each of these rates (no GPU needed)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if args.stand_in:
        args.images = args.images or 384
        print(json.dumps(stand_in_runs(args, args.batch_size or 32), indent=2))
        return
    args.images = args.images or 64
    bs = args.batch_size or (32 if cuda else 4)
    sizes = [(480, 640), (480, 640), (640, 480), (720, 1280)]  # mixed aspect ratios, as in real buckets
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, sizes)
        ckpt = str(tmp / "teacher.pth")
        export_released(build_model(args.encoder), ckpt)
        a = bare_loop(paths, ckpt, args.encoder, args.input_size, bs, args.dtype, tmp, args.preprocessing)
        b, b_steady, _ = ray_job(tmp / "images", ckpt, args.encoder, args.input_size, bs, args.dtype, tmp / "job",
                              args.partition_size or max(1, args.images // 8), preprocessing=args.preprocessing,
                              keys_per_task=args.keys_per_task, compile=args.compile)
        result = {"device": torch.cuda.get_device_name() if cuda else f"cpu x{os.cpu_count()}",
                  "encoder": args.encoder, "input_size": args.input_size, "images": args.images,
                  "batch_size": bs, "preprocessing": args.preprocessing, "compile": args.compile,
                  "bare_loop_img_s": round(a, 3), "ray_job_img_s": round(b, 3),
                  "ray_job_steady_img_s": round(b_steady, 3), "ratio_b_over_a": round(b / a, 3),
                  "ratio_steady_b_over_a": round(b_steady / a, 3)}
        if cuda:
            c, tflops = model_alone(args.encoder, args.input_size, bs, args.dtype, (518, 686), compile=args.compile)
            result.update(model_alone_img_s=round(c, 2), ratio_b_over_c=round(b / c, 3),
                          ratio_steady_b_over_c=round(b_steady / c, 3),
                          model_tflops=round(tflops, 1), img_per_gpu_hour=round(b_steady * 3600))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
