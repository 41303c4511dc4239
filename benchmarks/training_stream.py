"""Training speed with and without the Ray Data loop pause (``depthlib.ray_data_pacing``).

    .venv/bin/python benchmarks/training_stream.py [--steps 60] [--rows 160]

Renders ``--rows`` photo-style scenes as training shards, then, once with the
pause (the default) and once without (``DEPTHLIB_RAY_DATA_PACING=0``), each on
its own local Ray cluster (4 logical CPUs, as the tests declare): a short
warm-up run, then a ``--deterministic`` run (each worker's stream executes in
the worker itself) and a shared-stream run (executed by Ray Train's split
coordinator), tiny model, 2 workers, batch 8, 126 px crops, CutMix on. Prints
the steady-state images/s of each (the median of the logged windows after
the first) and the paced/unpaced ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RUNS = {"deterministic": {"deterministic": True}, "shared stream": {"deterministic": False}}


def _child(data: str, steps: int, work: str) -> None:
    """One Ray cluster: warm-up, then each of RUNS; prints one JSON line."""
    import ray

    from depthlib.training.config import PRESETS, TrainConfig
    from depthlib.training.job import run_training

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def run(name: str, n: int, **kw) -> float:
        out = os.path.join(work, name.replace(" ", "_"))
        cfg = TrainConfig(**{**PRESETS["tiny_cpu"], "stage": "teacher", "workers": 2, "batch_size": 8, "crop": 126,
                             "data": [data], "output": out, "steps": n, "log_every": 10, "val_every": 10**6,
                             "checkpoint_every": 10**6, "cutmix": True, "max_failures": 0, **kw})
        run_training(cfg, log=lambda *_: None, start_retries=0)
        rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        return statistics.median([r["images_per_s"] for r in rows if "images_per_s" in r][1:] or [0.0])

    run("warm-up", 20)
    print("RESULT " + json.dumps({name: run(name, steps, **kw) for name, kw in RUNS.items()}), flush=True)
    ray.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rows", type=int, default=160)
    p.add_argument("--child", nargs=2, metavar=("DATA", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.steps, args.child[1])
        return 0

    from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic

    root = tempfile.mkdtemp(prefix="bench-stream-")
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    make_synthetic(MakeSyntheticConfig(output=f"{root}/data", count=args.rows, size="126x168", seed=3, style="photo",
                                       scenes_per_task=32), progress=False)
    ray.shutdown()
    results = {}
    for mode, switch in (("paced", "1"), ("unpaced", "0")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(DEPTHLIB_RAY_DATA_PACING=switch, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", f"{root}/data/shards",
                               f"{root}/{mode}"], env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[mode] = json.loads(line[len("RESULT "):])
    print(f"steady-state images/s, tiny model, 2 workers x batch 8, {args.steps} steps (median of 10-step windows)")
    print(f"{'run':<16} {'paced':>8} {'unpaced':>8} {'ratio':>6}")
    for name in RUNS:
        a, b = results["paced"][name], results["unpaced"][name]
        print(f"{name:<16} {a:8.1f} {b:8.1f} {a / max(b, 1e-9):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
