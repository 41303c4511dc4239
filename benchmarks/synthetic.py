"""Synthetic scene generator throughput on ONE core.

    .venv/bin/python benchmarks/synthetic.py [--scenes 60] [--rounds 5] [--sizes 256x256 518x518]

Renders the same seeds in several rounds per (size, style) and prints scenes/s
of the median and the best round, and the ratio to the target of 50 scenes/s
at 256x256 (``render_scene`` end to end: sampling the scene and rendering it;
no encoding, no I/O). The process is pinned to one CPU and numpy's thread
pools to one thread, so the figure is per core; a Ray job scales it by the
number of CPUs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthlib.synthetic import STYLES, render, render_scene, sample_scene  # noqa: E402

TARGET_SCENES_PER_S = 50.0  # at 256x256, one core


def _bench(style: str, h: int, w: int, scenes: int, rounds: int) -> dict:
    for seed in range(3):  # warm-up: baked noise texture, allocator, caches
        render_scene(seed, h, w, style)
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for seed in range(scenes):
            render_scene(seed, h, w, style)
        per_round.append(scenes / (time.perf_counter() - t0))
    # split of one round: drawing the scene vs rendering it
    t0 = time.perf_counter()
    specs = [sample_scene(seed, h, w, style) for seed in range(scenes)]
    t1 = time.perf_counter()
    for spec in specs:
        render(spec)
    t2 = time.perf_counter()
    return {"median": statistics.median(per_round), "best": max(per_round),
            "sample_ms": 1000 * (t1 - t0) / scenes, "render_ms": 1000 * (t2 - t1) / scenes,
            "objects": sum(len(s.objects) for s in specs) / scenes}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--scenes", type=int, default=60, help="scenes per round (seeds 0..N-1)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per size and style")
    parser.add_argument("--sizes", nargs="+", default=["256x256", "518x518"], help="HxW sizes")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"one core (affinity {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}), "
          f"{args.scenes} scenes x {args.rounds} rounds; target {TARGET_SCENES_PER_S:.0f} scenes/s at 256x256")
    print(f"{'size':>9} {'style':>9} {'scenes/s':>9} {'best':>7} {'ms/scene':>9} "
          f"{'sample':>7} {'render':>7} {'objects':>7} {'vs target':>9}")
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        for style in args.styles:
            r = _bench(style, h, w, args.scenes, args.rounds)
            print(f"{size:>9} {style:>9} {r['median']:9.1f} {r['best']:7.1f} {1000 / r['median']:9.2f} "
                  f"{r['sample_ms']:7.2f} {r['render_ms']:7.2f} {r['objects']:7.1f} "
                  f"{r['median'] / TARGET_SCENES_PER_S:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
